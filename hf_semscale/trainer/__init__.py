"""The ``transformers`` adapter: ``SemScaleConfig`` (``config``), ``SemScaleTrainer`` (``trainer``), the callback and
loss a plain ``transformers.Trainer`` uses, ``SemScaleBalancing`` / ``SemScaleCallback`` (``balancing``), and the
checkpoint files (``checkpoints``)."""

from .balancing import SemScaleBalancing, SemScaleCallback
from .checkpoints import HISTORY_FILENAME, STATE_FILENAME, checkpoint_problem, latest_complete_checkpoint
from .config import SemScaleConfig
from .trainer import SemScaleTrainer

__all__ = [
    "SemScaleConfig",
    "SemScaleTrainer",
    "SemScaleCallback",
    "SemScaleBalancing",
    "STATE_FILENAME",
    "HISTORY_FILENAME",
    "checkpoint_problem",
    "latest_complete_checkpoint",
]
