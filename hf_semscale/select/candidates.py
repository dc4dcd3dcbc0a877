"""The candidate methods of a selection and their validation grids.

A candidate is a method of :mod:`hf_semscale.select.methods` (its ``SemScaleConfig`` overrides) plus the grid of the
knobs chosen on validation. Every re-weighting candidate gets the same grid over the START of re-weighting (a fraction
of training; a pool method's warm-up ends one epoch, its fill stage, earlier, so count and scale weights apply from the
same step), besides its own knob: gamma for scale weights, the exponent p of ``count_power``. Methods that do not
re-weight have no grid; ``ce_posthoc_la`` reuses the ``ce`` runs and tunes tau on their validation logits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ..dsb.settings import DYNAMIC_WEIGHTING_MODES
from .methods import METHODS, POSTHOC_METHODS, TUNED_METHODS, method_overrides

__all__ = ["knob_text", "DEFAULT_CANDIDATES", "GridSpec", "Candidate", "build_candidates", "grid_axes", "grid_points"]

DEFAULT_CANDIDATES = (
    "ce",
    "balanced_softmax",
    "ce_posthoc_la",
    "pow_ce_tuned",
    "pow_bs_tuned",
    "dsb_ce",
    "dsb_balanced_softmax",
)
"""What ``hf-semscale select`` compares unless told otherwise (the strongest of each family in the regime study)."""


@dataclass(frozen=True)
class GridSpec:
    """The validation grid: start of re-weighting (fraction of training), gamma (scale weights), p (count power)."""

    starts: tuple[float, ...] = (0.1, 0.4, 0.8)
    gammas: tuple[float, ...] = (0.5, 1.0, 4.0)
    powers: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)

    def __post_init__(self) -> None:
        for name, values, low, high in (
            ("starts", self.starts, 0.0, 1.0),
            ("gammas", self.gammas, 0.0, 8.0),
            ("powers", self.powers, 0.0, 4.0),
        ):
            if not values or not all(low <= float(v) <= high for v in values):
                raise ValueError(f"grid {name} must be a non-empty list of values in [{low}, {high}], got {values!r}")


@dataclass(frozen=True)
class Candidate:
    """One method of a selection: ``points`` are the ``SemScaleConfig`` overrides of each grid point (the method's
    own overrides included); ``trains_as`` names the method whose runs it reuses (post-hoc methods)."""

    name: str
    points: tuple[dict[str, Any], ...]
    uses_pool: bool
    trains_as: str | None = None

    @property
    def tuned_knobs(self) -> tuple[str, ...]:
        """The knobs whose value differs between grid points (sorted): what validation chooses."""
        names = {k for p in self.points for k in p}
        return tuple(sorted(k for k in names if len({repr(p.get(k)) for p in self.points}) > 1))

    def knobs_of(self, point: dict[str, Any]) -> dict[str, Any]:
        """The tuned knobs' values at ``point``."""
        return {k: point[k] for k in self.tuned_knobs}

    @property
    def complexity(self) -> tuple[int, int]:
        """(uses a feature pool, number of tuned knobs): smaller is simpler; ties in accuracy go to the simpler."""
        return int(self.uses_pool), len(self.tuned_knobs) + int(self.trains_as is not None)


def knob_text(knobs: dict[str, Any], separator: str = ", ") -> str:
    """``{"semscale_gamma": 4.0, ...}`` -> ``"gamma=4, ..."`` (empty for no knobs)."""
    return separator.join(f"{k.removeprefix('semscale_')}={v:g}" for k, v in knobs.items())


def grid_axes(method: str, epochs: float, grid: GridSpec) -> dict[str, list[float]]:
    """The tuned knobs of ``method`` (a re-weighting method of the method table) and their values: the start of
    re-weighting as ``semscale_warmup_ratio`` (a pool method's one epoch earlier), gamma, the count power p."""
    weighting = METHODS[method]["semscale_weighting"]
    pool = weighting in DYNAMIC_WEIGHTING_MODES
    fill = 1.0 / epochs if pool else 0.0
    axes: dict[str, list[float]] = {"semscale_warmup_ratio": [round(max(0.0, s - fill), 4) for s in grid.starts]}
    if pool and weighting != "scale_equivalent_count":
        axes["semscale_gamma"] = list(grid.gammas)
    if weighting == "count_power":
        axes["semscale_count_power"] = list(grid.powers)
    return axes


def grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``axes`` (knob -> values), knobs in sorted order, the last varying fastest."""
    keys = sorted(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _points(method: str, epochs: float, grid: GridSpec) -> list[dict[str, Any]]:
    base = method_overrides(method)
    if method not in TUNED_METHODS:
        return [base]
    return [{**base, **point} for point in grid_points(grid_axes(method, epochs, grid))]


def build_candidates(
    names: tuple[str, ...] | list[str], epochs: float, grid: GridSpec | None = None
) -> list[Candidate]:
    """The candidates ``names`` (methods of the method table) with their grids for a run of ``epochs`` epochs."""
    if not names:
        raise ValueError("no candidate methods given. Fix: name at least one, e.g. ce balanced_softmax dsb_ce")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown candidate methods {unknown}. Fix: choose from {sorted(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"candidate methods repeat: {list(names)}")
    if not epochs > 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    grid = grid or GridSpec()
    out = []
    for name in names:
        trains_as = POSTHOC_METHODS.get(name)
        source = trains_as or name
        points = tuple(_points(source, epochs, grid))
        out.append(
            Candidate(
                name=name,
                points=points,
                uses_pool=METHODS[source]["semscale_weighting"] in DYNAMIC_WEIGHTING_MODES,
                trains_as=trains_as,
            )
        )
    return out
