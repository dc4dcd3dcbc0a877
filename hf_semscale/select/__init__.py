"""Choosing a method for the user's data: the regime diagnosis, the candidates and their validation grids, the run
queue, the selection rule and its report. ``hf-semscale select`` and :func:`select_text` drive it end to end."""

from .candidates import DEFAULT_CANDIDATES, Candidate, GridSpec, build_candidates
from .regime import REGIMES, diagnose_regime
from .selection import SelectionError, SelectionSettings, select_method

__all__ = [
    "DEFAULT_CANDIDATES",
    "Candidate",
    "GridSpec",
    "build_candidates",
    "REGIMES",
    "diagnose_regime",
    "SelectionError",
    "SelectionSettings",
    "select_method",
    "select_text",
]


def __getattr__(name: str):
    if name == "select_text":  # imports datasets / transformers: only when asked
        from .pipeline import select_text

        return select_text
    raise AttributeError(f"module 'hf_semscale.select' has no attribute {name!r}")
