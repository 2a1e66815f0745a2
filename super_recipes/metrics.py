"""Metrics (``train_metrics_list`` / ``valid_metrics_list``): torchmetrics objects, by registered name.

Any ``torchmetrics`` class is usable by name with its arguments (``{MulticlassF1Score: {num_classes: 10}}``).
A batch may carry a third element, a dict of extras (``(inputs, targets, extras)``); a metric that sets
``accepts_batch_extras = True`` receives them as keyword arguments of ``update``.
``Accuracy`` and ``Top5`` are registered as top-k accuracies over logits that need no ``num_classes``: the
torchmetrics classification metrics require the class count up front, which a recipe should not have to repeat.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torchmetrics

from super_recipes.registry import METRICS, build, is_spec, register_metric, to_plain


class TopKAccuracy(torchmetrics.Metric):
    """Fraction of samples whose target is among the ``k`` highest-scoring classes."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        self.k = k
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if target.ndim == preds.ndim:  # one-hot or soft targets (mixup, label smoothing done in data)
            target = target.argmax(dim=1)
        topk = preds.topk(min(self.k, preds.shape[1]), dim=1).indices
        self.correct += (topk == target.unsqueeze(1)).any(dim=1).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


@register_metric("Accuracy")
class Accuracy(TopKAccuracy):
    """Top-1 accuracy over logits ``[B, C]`` and integer targets ``[B]``."""

    def __init__(self, **kwargs: Any):
        super().__init__(k=1, **kwargs)


@register_metric("Top5")
class Top5(TopKAccuracy):
    """Top-5 accuracy over logits ``[B, C]`` and integer targets ``[B]``."""

    def __init__(self, **kwargs: Any):
        super().__init__(k=5, **kwargs)


def build_metrics(specs: Any, where: str) -> dict[str, torchmetrics.Metric]:
    """``{name: metric}`` for ``train_metrics_list`` / ``valid_metrics_list`` / ``test_metrics_list``.

    Entries are recipe specs (named by their registered name: ``Accuracy``, ``Top5``...) or, from the Python API,
    metric objects or classes (named by their class); a mapping ``{name: metric object}`` names them explicitly.
    A repeated name gets the entry's index appended. A metric whose ``compute()`` returns a dict (several
    values) logs each under its own key.
    """
    specs = to_plain(specs)
    if specs is None or (isinstance(specs, (Mapping, list, tuple)) and not specs):
        return {}
    if isinstance(specs, Mapping) and specs and "_target_" not in specs and not any(is_spec(v) for v in
                                                                                    specs.values()):
        named = list(specs.items())  # the Python API's {name: metric object}
    else:
        entries = specs if isinstance(specs, (list, tuple)) else [specs]
        named = [(_metric_name(spec), spec) for spec in entries]
    metrics: dict[str, torchmetrics.Metric] = {}
    for i, (name, spec) in enumerate(named):
        metric = build(METRICS, spec, f"{where}[{i}]")
        metrics[name if name not in metrics else f"{name}_{i}"] = metric
    return metrics


def _metric_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec.rpartition(".")[2]
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            return str(spec["_target_"]).rpartition(".")[2]
        key = next(iter(spec))
        return key.__name__ if inspect.isclass(key) else str(key).rpartition(".")[2]
    return spec.__name__ if inspect.isclass(spec) else type(spec).__name__


def update_metric(metric: torchmetrics.Metric, preds: Any, targets: Any, extras: dict | None) -> None:
    """``metric.update(preds, targets)``; metrics with ``accepts_batch_extras = True`` also get the batch's
    extras as keyword arguments (the third element of a batch, e.g. crowd boxes and image shapes in detection)."""
    if extras is not None and getattr(metric, "accepts_batch_extras", False):
        metric.update(preds, targets, **extras)
    else:
        metric.update(preds, targets)


def compute_metrics(metrics: dict[str, torchmetrics.Metric], prefix: str) -> dict[str, float]:
    """Compute (synchronised across processes by torchmetrics) and reset; ``{prefix/name: value}``."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, dict):
            out.update({f"{prefix}/{k}": float(v) for k, v in value.items()})
        else:
            out[f"{prefix}/{name}"] = float(value)
        metric.reset()
    return out


def check_metric_to_watch(watch: str, metric_names: list[str], loss_names: list[str]) -> None:
    """``metric_to_watch`` must name a validation result or a loss item; refuse it with the closest names."""
    from super_recipes.errors import RecipeError, did_you_mean

    known = metric_names + loss_names
    if watch not in known:
        raise RecipeError(
            f"training_hyperparams.metric_to_watch '{watch}' is neither a validation metric nor a loss item. "
            f"{did_you_mean(watch, known)} Valid: {', '.join(known)}"
        )
