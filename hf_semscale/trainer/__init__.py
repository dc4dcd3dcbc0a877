"""The ``transformers`` adapter: ``SemScaleConfig`` (``config``), ``SemScaleTrainer`` and ``SemScaleCallback``
(``trainer``), and the checkpoint files (``checkpoints``)."""

from .checkpoints import HISTORY_FILENAME, STATE_FILENAME, checkpoint_problem, latest_complete_checkpoint
from .config import SemScaleConfig
from .trainer import SemScaleCallback, SemScaleTrainer

__all__ = [
    "SemScaleConfig",
    "SemScaleTrainer",
    "SemScaleCallback",
    "STATE_FILENAME",
    "HISTORY_FILENAME",
    "checkpoint_problem",
    "latest_complete_checkpoint",
]
