"""The training loop: ``Trainer(experiment_name, ckpt_root_dir).train(model=, training_params=, ...)``.

One readable loop; everything optional (schedules, logging, user callbacks) hangs off the callback events in
:mod:`super_recipes.callbacks.base`. Per step the loop adds no host/device synchronisation: loss items stay on
the device until the epoch ends or a logger asks for them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from super_recipes.callbacks.base import Callback, CallbackList, PhaseContext
from super_recipes.callbacks.loggers import (
    EpochSummary,
    MetricsCSV,
    ProgressBar,
    TensorBoardLogger,
    attach_log_file,
    configure_console_logging,
    current_lrs,
)
from super_recipes.checkpoints import BEST, LATEST, save_checkpoint
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.losses import build_loss, loss_item_names, split_loss_output
from super_recipes.metrics import build_metrics, compute_metrics
from super_recipes.optimizers import build_optimizer
from super_recipes.registry import CALLBACKS, build_list
from super_recipes.reproducibility import seed_everything
from super_recipes.schedules import build_lr_schedule
from super_recipes.training_params import TrainingParams, parse_training_params

logger = logging.getLogger("super_recipes")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` recipe key: ``auto``/None picks CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device is '{device}' but CUDA is not available on this machine; use device=cpu.")
    return device


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a batch element (tensor, or list/tuple/dict of them, e.g. detection targets) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


class Trainer:
    """Runs training, validation and test for one experiment in ``<ckpt_root_dir>/<experiment_name>/``."""

    def __init__(self, experiment_name: str = "experiment", ckpt_root_dir: str | Path | None = None,
                 device: str | torch.device | None = None, recipe: Any = None):
        self.experiment_name = experiment_name
        self.ckpt_root_dir = Path(ckpt_root_dir or "checkpoints")
        self.experiment_dir = self.ckpt_root_dir / experiment_name
        self.device = resolve_device(device)
        self.recipe = recipe
        self.train_batches_per_epoch: int | None = None
        self.valid_batches_per_epoch: int | None = None

    # ------------------------------------------------------------------ training
    def train(self, model: torch.nn.Module, training_params: Any, train_loader: Iterable,
              valid_loader: Iterable | None = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Train ``model``; returns the last epoch's record (``{"valid/Accuracy": ..., ...}``)."""
        params = parse_training_params(training_params)
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        configure_console_logging(silent=params.silent_mode)
        log_handler = attach_log_file(self.experiment_dir)
        try:
            return self._train(model, params, train_loader, valid_loader, list(callbacks))
        finally:
            logger.removeHandler(log_handler)
            log_handler.close()

    def _train(self, model: torch.nn.Module, params: TrainingParams, train_loader: Iterable,
               valid_loader: Iterable | None, extra_callbacks: list[Callback]) -> dict[str, float]:
        seed_everything(params.seed, params.deterministic)
        net = model.to(self.device)
        optimizer = build_optimizer(net, params)
        loss_fn = build_loss(params.loss, params.criterion_params)
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn = loss_fn.to(self.device)
        train_metrics = {k: m.to(self.device) for k, m in
                         build_metrics(params.train_metrics_list, "training_hyperparams.train_metrics_list").items()}
        valid_metrics = {k: m.to(self.device) for k, m in
                         build_metrics(params.valid_metrics_list, "training_hyperparams.valid_metrics_list").items()}
        self.train_batches_per_epoch = _batches(train_loader, params.max_train_batches)
        self.valid_batches_per_epoch = _batches(valid_loader, params.max_valid_batches) if valid_loader else 0
        if not self.train_batches_per_epoch:
            raise RecipeError("The training dataloader is empty (or max_train_batches is 0).")

        watch = params.metric_to_watch.removeprefix("valid/")
        expected_names = _expected_loss_names(params, loss_fn)
        if valid_loader is not None and expected_names is not None:
            _check_metric_to_watch(watch, list(valid_metrics), expected_names)
        # An unnamed tuple-returning loss names its items only after one forward pass: check then.
        self._watch_check_pending = valid_loader is not None and expected_names is None
        self._valid_metric_names = list(valid_metrics)
        callbacks = CallbackList(self._service_callbacks(params) + self._user_callbacks(params) + extra_callbacks)
        ctx = PhaseContext(
            net=net, optimizer=optimizer, training_params=params, device=self.device,
            experiment_dir=self.experiment_dir, max_epochs=params.max_epochs,
            steps_per_epoch=self.train_batches_per_epoch, metric_to_watch=watch, trainer=self,
        )
        self._log_start(params, net)
        callbacks.on_training_start(ctx)
        record: dict[str, float] = {}
        for epoch in range(params.max_epochs):
            ctx.epoch = epoch
            started = time.perf_counter()
            record = {"epoch": epoch}
            record.update(self._train_epoch(ctx, callbacks, net, loss_fn, train_metrics, train_loader, params))
            validate = valid_loader is not None and (
                (epoch + 1) % params.run_validation_freq == 0 or epoch + 1 == params.max_epochs)
            valid_names = [f"valid/{n}" for n in ctx.loss_names] + [f"valid/{n}" for n in valid_metrics]
            record.update(dict.fromkeys(valid_names, math.nan))
            if validate:
                record.update(self._validate_epoch(ctx, callbacks, net, loss_fn, valid_metrics, valid_loader,
                                                   params))
            record["epoch_time"] = time.perf_counter() - started
            ctx.epoch_record = record
            improved = validate and self._update_best(ctx, record, params)
            if params.save_model:
                self._save(ctx, optimizer, callbacks, record, improved)
            if improved:
                callbacks.on_validation_end_best_epoch(ctx)
            callbacks.on_epoch_end(ctx)
            if ctx.stop_training:
                logger.info(f"Training stopped early after epoch {epoch + 1}.")
                break
        callbacks.on_training_end(ctx)
        self.net = net
        return record

    def _train_epoch(self, ctx: PhaseContext, callbacks: CallbackList, net: torch.nn.Module, loss_fn: Any,
                     metrics: dict, loader: Iterable, params: TrainingParams) -> dict[str, float]:
        net.train()
        device, optimizer = self.device, ctx.optimizer
        max_batches = self.train_batches_per_epoch
        items: list[torch.Tensor] = []
        callbacks.on_train_loader_start(ctx)
        epoch_lrs = current_lrs(optimizer)  # the rates of the epoch's first step, once the schedule set them
        for batch_idx, (inputs, targets) in enumerate(loader):
            if batch_idx >= max_batches:
                break
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            ctx.batch_idx, ctx.inputs, ctx.targets = batch_idx, inputs, targets
            callbacks.on_train_batch_start(ctx)
            preds = net(inputs)
            loss, loss_items = split_loss_output(loss_fn(preds, targets))
            ctx.preds, ctx.loss, ctx.loss_items = preds, loss, loss_items
            if not ctx.loss_names:
                ctx.loss_names = loss_item_names(loss_fn, params.loss_logging_items_names, loss_items.numel())
                if self._watch_check_pending:
                    _check_metric_to_watch(ctx.metric_to_watch, self._valid_metric_names, ctx.loss_names)
            callbacks.on_train_batch_loss_end(ctx)
            loss.backward()
            callbacks.on_train_batch_backward_end(ctx)
            callbacks.on_train_batch_gradient_step_start(ctx)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ctx.global_step += 1
            callbacks.on_train_batch_gradient_step_end(ctx)
            for metric in metrics.values():
                metric.update(preds.detach(), targets)
            items.append(loss_items)
            callbacks.on_train_batch_end(ctx)
        results = {**epoch_lrs, **_mean_items(items, ctx.loss_names, "train")}
        results.update(compute_metrics(metrics, "train"))
        ctx.metrics = results
        callbacks.on_train_loader_end(ctx)
        return results

    @torch.inference_mode()
    def _validate_epoch(self, ctx: PhaseContext, callbacks: CallbackList, net: torch.nn.Module, loss_fn: Any,
                        metrics: dict, loader: Iterable, params: TrainingParams) -> dict[str, float]:
        net.eval()
        items: list[torch.Tensor] = []
        callbacks.on_validation_loader_start(ctx)
        for batch_idx, (inputs, targets) in enumerate(loader):
            if batch_idx >= self.valid_batches_per_epoch:
                break
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            ctx.batch_idx, ctx.inputs, ctx.targets = batch_idx, inputs, targets
            callbacks.on_validation_batch_start(ctx)
            preds = net(inputs)
            ctx.preds = preds
            if loss_fn is not None:
                _, loss_items = split_loss_output(loss_fn(preds, targets))
                ctx.loss_items = loss_items
                items.append(loss_items)
            for metric in metrics.values():
                metric.update(preds, targets)
            callbacks.on_validation_batch_end(ctx)
        results = _mean_items(items, ctx.loss_names, "valid") if ctx.loss_names else {}
        results.update(compute_metrics(metrics, "valid"))
        ctx.metrics = results
        callbacks.on_validation_loader_end(ctx)
        return results

    # ------------------------------------------------------------------ bookkeeping
    def _update_best(self, ctx: PhaseContext, record: dict[str, float], params: TrainingParams) -> bool:
        value = record.get(f"valid/{ctx.metric_to_watch}", math.nan)
        if math.isnan(value):
            return False
        better = ctx.best_metric is None or (
            value > ctx.best_metric if params.greater_metric_to_watch_is_better else value < ctx.best_metric)
        if better:
            ctx.best_metric = value
        return better

    def _save(self, ctx: PhaseContext, optimizer: torch.optim.Optimizer, callbacks: CallbackList,
              record: dict[str, float], improved: bool) -> None:
        state = {
            "net": ctx.net.state_dict(),
            "acc": ctx.best_metric,
            "epoch": ctx.epoch,
            "global_step": ctx.global_step,
            "metric_to_watch": ctx.metric_to_watch,
            "metrics": record,
            "optimizer_state_dict": optimizer.state_dict(),
            "callbacks": callbacks.state_dict(),
            "recipe": _recipe_yaml(self.recipe),
        }
        save_checkpoint(state, self.experiment_dir / LATEST)
        if improved:
            save_checkpoint(state, self.experiment_dir / BEST)

    def _service_callbacks(self, params: TrainingParams) -> list[Callback]:
        services: list[Callback] = []
        schedule = build_lr_schedule(params)
        if schedule is not None:
            services.append(schedule)
        if not params.silent_mode and sys.stderr.isatty():
            services.append(ProgressBar())
        services += [EpochSummary(), TensorBoardLogger(params.log_every_n_steps), MetricsCSV()]
        return services

    def _user_callbacks(self, params: TrainingParams) -> list[Callback]:
        return build_list(CALLBACKS, params.phase_callbacks, "training_hyperparams.phase_callbacks")

    def _log_start(self, params: TrainingParams, net: torch.nn.Module) -> None:
        num_params = sum(p.numel() for p in net.parameters())
        logger.info(
            f"Training {type(net).__name__} ({num_params / 1e6:.2f}M parameters) on {self.device} for "
            f"{params.max_epochs} epochs, {self.train_batches_per_epoch} steps/epoch; outputs in "
            f"{self.experiment_dir}"
        )

    # ------------------------------------------------------------------ test
    @torch.inference_mode()
    def test(self, model: torch.nn.Module, test_loader: Iterable, test_metrics_list: Any = ("Accuracy",),
             loss: Any = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Evaluate ``model`` on ``test_loader``; returns ``{"test/<metric>": value, ...}``."""
        net = model.to(self.device).eval()
        metrics = {k: m.to(self.device) for k, m in build_metrics(list(test_metrics_list), "test_metrics_list").items()}
        loss_fn = build_loss(loss) if loss is not None else None
        callback_list = CallbackList(list(callbacks))
        ctx = PhaseContext(net=net, device=self.device, experiment_dir=self.experiment_dir, trainer=self)
        items: list[torch.Tensor] = []
        callback_list.on_test_loader_start(ctx)
        for batch_idx, (inputs, targets) in enumerate(test_loader):
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            ctx.batch_idx, ctx.inputs, ctx.targets = batch_idx, inputs, targets
            callback_list.on_test_batch_start(ctx)
            ctx.preds = preds = net(inputs)
            if loss_fn is not None:
                items.append(split_loss_output(loss_fn(preds, targets))[1])
            for metric in metrics.values():
                metric.update(preds, targets)
            callback_list.on_test_batch_end(ctx)
        results = _mean_items(items, loss_item_names(loss_fn, None, items[0].numel()), "test") if items else {}
        results.update(compute_metrics(metrics, "test"))
        ctx.metrics = results
        callback_list.on_test_loader_end(ctx)
        return results


def _batches(loader: Iterable | None, limit: int | None) -> int | None:
    try:
        count = len(loader)  # type: ignore[arg-type]
    except TypeError:
        count = None
    if limit is not None:
        count = limit if count is None else min(count, limit)
    return count


def _mean_items(items: list[torch.Tensor], names: list[str], prefix: str) -> dict[str, float]:
    if not items:
        return {}
    means = torch.stack(items).float().mean(dim=0).tolist()
    return {f"{prefix}/{name}": value for name, value in zip(names, means, strict=True)}


def _expected_loss_names(params: TrainingParams, loss_fn: Any) -> list[str] | None:
    """Loss item names known before the first forward pass (None for an unnamed tuple-returning loss)."""
    configured = params.loss_logging_items_names or getattr(loss_fn, "component_names", None)
    if configured:
        return list(configured)
    if isinstance(loss_fn, torch.nn.modules.loss._Loss):
        return [type(loss_fn).__name__]
    return None


def _check_metric_to_watch(watch: str, metric_names: list[str], loss_names: list[str]) -> None:
    known = metric_names + loss_names
    if watch not in known:
        raise RecipeError(
            f"training_hyperparams.metric_to_watch '{watch}' is neither a validation metric nor a loss item. "
            f"{did_you_mean(watch, known)} Valid: {', '.join(known)}"
        )


def _recipe_yaml(recipe: Any) -> str | None:
    if recipe is None:
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(recipe if OmegaConf.is_config(recipe) else OmegaConf.create(recipe), resolve=True)
