"""``average_best_models: true`` / ``average_best_models_k``: average the k best validated models.

After every validation the model that was validated (``context.eval_net``: the EMA model when ``ema`` is on,
else the net) is kept as a CPU snapshot if its ``metric_to_watch`` ranks among the k best so far (ties: the
earlier epoch ranks first). When training ends, ``<experiment_dir>/average_model.pth`` receives the average of
those snapshots, and the averaged model is validated.

Snapshots are taken at ``on_validation_loader_end``, before the trainer writes ``ckpt_latest.pth``, so the
ranking saved with a checkpoint includes that checkpoint's epoch. They are persisted to
``average_model_snapshots.pth`` (when ``save_model`` is on, i.e. when a run can be resumed at all); a resumed run
keeps the persisted snapshots of the epochs before the one it restarts from.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.callbacks.early_stop import read_validation_metric
from super_recipes.engine.checkpoints import load_checkpoint, save_checkpoint
from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")

AVERAGE_MODEL = "average_model.pth"
SNAPSHOTS = "average_model_snapshots.pth"


def build_model_averaging(params: Any) -> BestModelsAveraging | None:
    """The service callback for ``training_hyperparams.average_best_models`` (None when it is off)."""
    if not params.average_best_models:
        return None
    return BestModelsAveraging(k=params.average_best_models_k, metric_to_watch=params.metric_to_watch,
                               greater_is_better=params.greater_metric_to_watch_is_better)


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point tensors; other entries (e.g. BN ``num_batches_tracked``) from the first dict.

    The mean is accumulated in float64 so that averaging low-precision weights does not lose more than the
    final cast does.
    """
    if not state_dicts:
        raise ValueError("average_state_dicts needs at least one state dict.")
    first = state_dicts[0]
    averaged = {}
    for key, value in first.items():
        if torch.is_floating_point(value):
            total = torch.zeros_like(value, dtype=torch.float64)
            for state in state_dicts:
                total += state[key].to(torch.float64)
            averaged[key] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def unwrap_model(net: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DataParallel/DistributedDataParallel and ``torch.compile`` wrappers.

    Snapshots are taken from it so their keys carry no ``module.``/``_orig_mod.`` prefixes.
    """
    while True:
        if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            net = net.module
        elif isinstance(getattr(net, "_orig_mod", None), torch.nn.Module):
            net = net._orig_mod
        else:
            return net


@dataclass
class Snapshot:
    """One kept model: its epoch (0-based, as in checkpoints and metrics.csv), its metric, its CPU weights."""

    epoch: int
    metric: float
    net: dict[str, torch.Tensor]


class BestModelsAveraging(Callback):
    """Keeps the ``k`` best validated models by ``metric_to_watch`` and writes their average at the end.

    ``metric_to_watch`` None means the trainer's. The validation results of the averaged model are in
    ``self.metrics``, in the file's ``metrics`` and in ``context.average_model_metrics``. Only rank 0 keeps
    snapshots and writes files.
    """

    order = 150

    def __init__(self, k: int = 10, metric_to_watch: str | None = None, greater_is_better: bool = True):
        if k < 1:
            raise RecipeError(f"training_hyperparams.average_best_models_k must be at least 1, got {k}.")
        self.k = int(k)
        self.metric_to_watch = metric_to_watch.removeprefix("valid/") if metric_to_watch else None
        self.greater_is_better = bool(greater_is_better)
        self.snapshots: list[Snapshot] = []  # best first
        self.metrics: dict[str, float] = {}
        self._persist = True
        self._path: Path | None = None
        self._checkpoint_epochs: list[int] = []  # from a resumed checkpoint, to notice a lost snapshots file

    def _rank(self, metric: float, epoch: int) -> tuple[float, int]:
        return (-metric if self.greater_is_better else metric, epoch)

    def state_dict(self) -> dict[str, Any]:
        # The weights live in the snapshots file; the checkpoint only records which epochs are kept.
        return {"epochs": [s.epoch for s in self.snapshots], "metrics": [s.metric for s in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._checkpoint_epochs = list(state.get("epochs", []))

    def on_training_start(self, context: PhaseContext) -> None:
        if not context.is_rank_zero:
            return
        self.metric_to_watch = self.metric_to_watch or context.metric_to_watch.removeprefix("valid/")
        self._path = Path(context.experiment_dir) / SNAPSHOTS
        self._persist = bool(getattr(context.training_params, "save_model", True))
        self.snapshots = []
        if context.epoch > 0:
            self._resume(context.epoch)

    def _resume(self, start_epoch: int) -> None:
        if not self._path.is_file():
            if self._checkpoint_epochs:
                logger.warning(f"average_best_models: {self._path} is missing; the average will only include "
                               f"epochs from {start_epoch} on.")
            return
        state = load_checkpoint(self._path)
        if (state.get("metric_to_watch"), state.get("greater_is_better")) != (self.metric_to_watch,
                                                                              self.greater_is_better):
            logger.warning(f"average_best_models: {self._path} ranks by another metric_to_watch; ignoring it.")
            return
        # Epochs from start_epoch on are trained again, so their old snapshots are stale.
        kept = [Snapshot(**entry) for entry in state["snapshots"] if entry["epoch"] < start_epoch]
        self.snapshots = sorted(kept, key=lambda s: self._rank(s.metric, s.epoch))[: self.k]

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        if not context.is_rank_zero or not context.metrics:
            return
        value = read_validation_metric(context.metrics, self.metric_to_watch, "average_best_models")
        if not math.isfinite(value):  # no result, or a diverged model that would spoil the average
            return
        rank = self._rank(value, context.epoch)
        if len(self.snapshots) >= self.k and rank >= self._rank(self.snapshots[-1].metric, self.snapshots[-1].epoch):
            return  # copy the weights only when they are kept
        net = _validated_net(context)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap_model(net).state_dict().items()}
        self.snapshots.append(Snapshot(context.epoch, value, weights))
        self.snapshots = sorted(self.snapshots, key=lambda s: self._rank(s.metric, s.epoch))[: self.k]
        if self._persist:
            save_checkpoint({"metric_to_watch": self.metric_to_watch, "greater_is_better": self.greater_is_better,
                             "snapshots": [asdict(s) for s in self.snapshots]}, self._path)

    def on_training_end(self, context: PhaseContext) -> None:
        if not context.is_rank_zero:
            return
        if not self.snapshots:
            logger.warning("average_best_models: no validation results, so no model to average.")
            return
        averaged = average_state_dicts([s.net for s in self.snapshots])
        self.metrics = self._evaluate(context, averaged)
        context.average_model_metrics = self.metrics
        epochs = [s.epoch for s in self.snapshots]
        save_checkpoint({"net": averaged, "epochs": epochs, "metrics": self.metrics,
                         "metric_to_watch": self.metric_to_watch,
                         "snapshot_metrics": [s.metric for s in self.snapshots]},
                        Path(context.experiment_dir) / AVERAGE_MODEL)
        results = "  ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        logger.info(f"Average of the {len(epochs)} best models by {self.metric_to_watch} (epochs {epochs}, "
                    f"0-based) written to {AVERAGE_MODEL}: {results or 'not validated'}")

    def _evaluate(self, context: PhaseContext, averaged: dict[str, torch.Tensor]) -> dict[str, float]:
        evaluate = getattr(context.trainer, "evaluate", None)
        if evaluate is None:  # driven outside a Trainer (or one without a validation loop)
            return {}
        model = copy.deepcopy(unwrap_model(_validated_net(context)))
        model.load_state_dict(averaged)
        return {name: float(value) for name, value in evaluate(model).items()}


def _validated_net(context: PhaseContext) -> torch.nn.Module:
    eval_net = getattr(context, "eval_net", None)
    return context.net if eval_net is None else eval_net
