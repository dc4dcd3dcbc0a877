"""Dynamic semantic-scale-balanced re-weighting for any training loop, torch only: the knobs (``settings``), the
engine (``balancer``), the per-class feature pool (``pool``), the head-input capture (``capture``) and the
cross-process helpers (``comm``)."""
