"""The selection's candidate space for ``Trainer.hyperparameter_search`` (optuna backend, a grid sampler).

For users with their own ``Trainer`` code: each trial is one (candidate, grid point) of
:func:`~hf_semscale.select.candidates.build_candidates`, i.e. the same methods and the same grids (the start of
re-weighting shared by count and scale weights, gamma, p) as ``hf-semscale select``::

    space = trainer_search_space(trainer.args)
    trainer.hyperparameter_search(
        hp_space=space.hp_space, backend="optuna", n_trials=len(space), direction="maximize",
        sampler=space.sampler(), compute_objective=lambda metrics: metrics["eval_balanced_accuracy"],
    )
    space.overrides(best_run.hyperparameters)   # the SemScaleConfig fields of the best trial

A trial has one seed and no tie rule; ``hf-semscale select`` adds seeds and prefers the simpler of tied candidates.
Post-hoc candidates (``ce_posthoc_la``) change prediction, not training: they are not trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .candidates import DEFAULT_CANDIDATES, GridSpec, build_candidates, knob_text

__all__ = ["TrainerSearchSpace", "trainer_search_space"]

PARAM = "candidate"
"""The one categorical parameter of a trial: the key of a (candidate, grid point)."""


def _key(method: str, knobs: dict[str, Any]) -> str:
    text = knob_text(knobs, separator=",")
    return f"{method}[{text}]" if text else method


@dataclass(frozen=True)
class TrainerSearchSpace:
    """``points``: trial key -> the complete ``semscale_*`` values a trial trains with (the base arguments' values,
    overridden by the candidate's), so no knob of an earlier trial carries over to the next."""

    points: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.points)

    def hp_space(self, trial: Any) -> dict[str, Any]:
        """Optuna's ``hp_space``: the trial's ``semscale_*`` values."""
        return dict(self.points[trial.suggest_categorical(PARAM, list(self.points))])

    def sampler(self, seed: int = 0) -> Any:
        """An ``optuna.samplers.GridSampler`` visiting every point once (``n_trials=len(space)``)."""
        try:
            import optuna
        except ImportError as err:
            raise ImportError('the optuna grid sampler needs optuna: pip install "hf_semscale[search]"') from err
        return optuna.samplers.GridSampler({PARAM: list(self.points)}, seed=seed)

    def overrides(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """The ``semscale_*`` values of a trial, from ``BestRun.hyperparameters`` (``{"candidate": key}``)."""
        return dict(self.points[hyperparameters[PARAM]])


def trainer_search_space(
    args: Any,
    candidates: tuple[str, ...] | list[str] = DEFAULT_CANDIDATES,
    grid: GridSpec | None = None,
) -> TrainerSearchSpace:
    """The trials of ``candidates`` for a run of ``args.num_train_epochs`` epochs, each based on ``args``' own
    ``semscale_*`` values (a ``SemScaleConfig``)."""
    trained = [c for c in build_candidates(list(candidates), float(args.num_train_epochs), grid) if c.trains_as is None]
    if not trained:
        raise ValueError(
            f"no trainable candidate in {list(candidates)}: post-hoc methods change prediction, not training. Fix: "
            "add e.g. 'ce'; adjust its logits after training with hf_semscale.core.posthoc."
        )
    base = {name: getattr(args, name) for name in vars(args) if name.startswith("semscale_")}
    points = {}
    for cand in trained:
        for point in cand.points:
            # a point that places the start itself resets the other ways of placing it (they are exclusive)
            start = (
                {"semscale_reweight_start": None, "semscale_warmup_steps": -1}
                if "semscale_warmup_ratio" in point
                else {}
            )
            points[_key(cand.name, cand.knobs_of(point))] = {**base, **start, **point}
    return TrainerSearchSpace(points)
