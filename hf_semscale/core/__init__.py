"""The method's math, torch only: semantic scales (``scale``), imbalance summaries (``imbalance``), class weights
(``weighting``) and the per-sample base losses (``losses``)."""
