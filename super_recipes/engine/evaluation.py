"""Evaluation: one pass of a model over a loader, giving loss items and metrics (validation, test, averages).

The pass fires the four events it is given (validation or test, or none) so callbacks see each batch; under DDP
each rank evaluates its own shard and the loss sums are reduced, while torchmetrics synchronises the metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from super_recipes.callbacks.base import CallbackList, PhaseContext
from super_recipes.engine.devices import to_device
from super_recipes.engine.distributed import World, all_reduce_sum
from super_recipes.losses import split_loss_output
from super_recipes.metrics import compute_metrics, update_metric

Event = Callable[[PhaseContext], None]


def _no_event(context: PhaseContext) -> None:
    return None


def detached(preds: Any) -> Any:
    """Model outputs without their graphs: a tensor, or a tuple/list of them (main and auxiliary outputs)."""
    if isinstance(preds, torch.Tensor):
        return preds.detach()
    if isinstance(preds, (tuple, list)):
        return type(preds)(detached(p) for p in preds)
    return preds


def compute_alone(metric: Any) -> None:
    """Make ``metric.compute()`` use this process's states only (an evaluation that one rank runs alone).

    ``sync_on_compute`` is read by our metrics at every compute; a torchmetrics ``Metric`` copies it at
    construction, so its documented ``dist_sync_fn`` is replaced by a gather over this process alone.
    """
    metric.sync_on_compute = False
    if hasattr(metric, "dist_sync_fn"):
        metric.dist_sync_fn = _gather_this_process


def _gather_this_process(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    return [tensor]


@dataclass(frozen=True)
class EvaluationEvents:
    """The callback events one evaluation fires."""

    loader_start: Event = _no_event
    batch_start: Event = _no_event
    batch_end: Event = _no_event
    loader_end: Event = _no_event

    @classmethod
    def validation(cls, callbacks: CallbackList) -> EvaluationEvents:
        return cls(callbacks.on_validation_loader_start, callbacks.on_validation_batch_start,
                   callbacks.on_validation_batch_end, callbacks.on_validation_loader_end)

    @classmethod
    def test(cls, callbacks: CallbackList) -> EvaluationEvents:
        return cls(callbacks.on_test_loader_start, callbacks.on_test_batch_start, callbacks.on_test_batch_end,
                   callbacks.on_test_loader_end)


@dataclass
class Evaluation:
    """What one evaluation pass needs besides the model and the loader.

    ``loss_names(n)`` names the ``n`` items of ``loss_fn`` (None: no loss is computed). ``prefix`` starts every
    result key (``valid/Accuracy``). ``world`` is the set of processes taking part (a single-process World for
    evaluations that rank 0 runs alone).
    """

    metrics: dict[str, Any]
    prefix: str
    device: torch.device
    loss_fn: Callable | None = None
    loss_names: Callable[[int], list[str]] | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    max_batches: int | None = None
    world: World = World()
    events: EvaluationEvents = EvaluationEvents()

    @torch.inference_mode()
    def run(self, net: torch.nn.Module, loader: Iterable, context: PhaseContext) -> dict[str, float]:
        """Evaluate ``net`` on ``loader``; returns ``{prefix/name: value}`` and leaves it in ``context.metrics``."""
        device, loss_fn, events = self.device, self.loss_fn, self.events
        was_training = net.training
        net.eval()
        item_sums: torch.Tensor | None = None
        samples = 0
        events.loader_start(context)
        for batch_idx, batch in enumerate(loader):
            if self.max_batches is not None and batch_idx >= self.max_batches:
                break
            inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
            context.batch_extras = to_device(batch[2], device) if len(batch) > 2 else None
            context.batch_idx, context.inputs, context.targets = batch_idx, inputs, targets
            batch_size = len(inputs)
            events.batch_start(context)
            with self.autocast():
                preds = net(inputs)
                if loss_fn is not None:
                    context.loss_items = split_loss_output(loss_fn(preds, targets))[1]
                    weighted = context.loss_items.float() * batch_size
                    item_sums = weighted if item_sums is None else item_sums + weighted
            samples += batch_size
            context.preds = preds
            for metric in self.metrics.values():
                update_metric(metric, preds, targets, context.batch_extras)
            events.batch_end(context)
        results: dict[str, float] = {}
        if item_sums is not None and self.loss_names is not None:
            names = self.loss_names(item_sums.numel())
            totals = all_reduce_sum(torch.cat([item_sums, item_sums.new_tensor([samples])]), self.world)
            means = (totals[:-1] / totals[-1]).tolist()  # loss items are averaged per sample
            results = {f"{self.prefix}/{n}": v for n, v in zip(names, means, strict=True)}
        results.update(compute_metrics(self.metrics, self.prefix))
        context.metrics = results
        events.loader_end(context)
        net.train(was_training)
        return results
