"""Reports and the Hub: ``semantic_scales.json`` (``report``), model and analysis cards from ``templates/`` and
pushes (``publish``)."""

from .publish import PushError, build_analysis_card, build_model_card, push_analysis, push_output_dir

__all__ = ["PushError", "build_model_card", "build_analysis_card", "push_output_dir", "push_analysis"]
