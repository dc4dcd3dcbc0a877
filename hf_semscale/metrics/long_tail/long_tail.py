"""``evaluate`` module: accuracy on long-tailed data, overall, balanced and per shot group.

Load offline from this folder::

    import evaluate
    from hf_semscale.metrics import LONG_TAIL_METRIC_PATH
    metric = evaluate.load(LONG_TAIL_METRIC_PATH, train_class_counts=[5000, 2997, ..., 50])
    metric.compute(predictions=[0, 1], references=[0, 2])

The computation is ``hf_semscale.metrics.long_tail_metrics``; see README.md beside this file.
"""

from collections.abc import Sequence

import datasets
import evaluate

from hf_semscale.metrics import long_tail_metrics

_DESCRIPTION = """Overall accuracy, balanced accuracy (mean per-class recall), and many-shot (> many_threshold
training samples), medium-shot and few-shot (< few_threshold) accuracy, each the mean per-class accuracy of its
group (None if the group has no evaluated class), plus the per-class accuracies."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    train_class_counts (`list` of `int`): training samples per class; here or when loading.
    many_threshold (`int`): a class with more training samples is many-shot (default 100).
    few_threshold (`int`): a class with fewer training samples is few-shot (default 20).
Returns:
    accuracy, balanced_accuracy, many_shot_accuracy, medium_shot_accuracy, few_shot_accuracy (`float` or None),
    per_class_accuracy (`list` of `float` or None).
Examples:
    >>> metric = evaluate.load(LONG_TAIL_METRIC_PATH, train_class_counts=[200, 50, 10])
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 2])["few_shot_accuracy"]
    0.0
"""

_CITATION = """@inproceedings{cao2019ldam,
  title={Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss},
  author={Cao, Kaidi and Wei, Colin and Gaidon, Adrien and Arechiga, Nikos and Ma, Tengyu},
  booktitle={NeurIPS}, year={2019}
}
@inproceedings{liu2019oltr,
  title={Large-Scale Long-Tailed Recognition in an Open World},
  author={Liu, Ziwei and Miao, Zhongqi and Zhan, Xiaohang and Wang, Jiayun and Gong, Boqing and Yu, Stella X.},
  booktitle={CVPR}, year={2019}
}"""


class LongTail(evaluate.Metric):
    """Long-tail accuracies; ``train_class_counts`` and the thresholds may be set at load or compute time."""

    def __init__(
        self,
        train_class_counts: Sequence[int] | None = None,
        many_threshold: int = 100,
        few_threshold: int = 20,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.train_class_counts = None if train_class_counts is None else list(train_class_counts)
        self.many_threshold = many_threshold
        self.few_threshold = few_threshold

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self,
        predictions,
        references,
        train_class_counts: Sequence[int] | None = None,
        many_threshold: int | None = None,
        few_threshold: int | None = None,
    ) -> dict:
        counts = self.train_class_counts if train_class_counts is None else list(train_class_counts)
        if counts is None:
            raise ValueError(
                "long_tail needs train_class_counts (training samples per class). Fix: "
                "evaluate.load(path, train_class_counts=[...]) or compute(..., train_class_counts=[...])."
            )
        return long_tail_metrics(
            predictions,
            references,
            counts,
            many_threshold=self.many_threshold if many_threshold is None else many_threshold,
            few_threshold=self.few_threshold if few_threshold is None else few_threshold,
        )
