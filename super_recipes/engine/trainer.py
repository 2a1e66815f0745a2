"""The training loop: ``Trainer(experiment_name, ckpt_root_dir).train(model=, training_params=, ...)``.

One readable loop; everything optional (schedules, logging, user callbacks) hangs off the callback events in
:mod:`super_recipes.callbacks.base`. Per step the loop adds no host/device synchronisation: loss items stay on
the device until the epoch ends or a logger asks for them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from super_recipes.callbacks.base import Callback, CallbackList, PhaseContext
from super_recipes.callbacks.loggers import attach_log_file, configure_console_logging, current_lrs
from super_recipes.callbacks.services import service_callbacks
from super_recipes.engine.checkpoints import BEST, LATEST, write_checkpoints
from super_recipes.data.samplers import epoch_batches, make_resumable, shard_for_evaluation
from super_recipes.engine.devices import resolve_device, to_device
from super_recipes.engine.distributed import (
    World,
    all_reduce_mean,
    all_reduce_sum,
    any_rank,
    broadcast_buffers,
    current_world,
    join_process_group,
    launched_by_torchrun,
    wrap_model,
)
from super_recipes.engine.ema import ModelEMA, build_ema
from super_recipes.errors import RecipeError
from super_recipes.engine.interrupts import StopRequests, TrainingInterrupted
from super_recipes.losses import build_loss, expected_loss_names, loss_item_names, split_loss_output
from super_recipes.metrics import build_metrics, check_metric_to_watch, compute_metrics, update_metric
from super_recipes.optimizers import build_optimizer
from super_recipes.engine.precision import amp_dtype_for, autocast_factory, grad_scaler_for
from super_recipes.registry import CALLBACKS, build_list
from super_recipes.engine.reproducibility import seed_everything
from super_recipes.engine.resume import describe_run, resume_checkpoint_path
from super_recipes.training_params import TrainingParams, parse_training_params
from super_recipes.engine.state import EpochProgress, capture, put_back_rng, restore

logger = logging.getLogger("super_recipes")

STOP_CHECK_STEPS = 20  # under DDP, how often (optimizer steps) the ranks agree on a SIGTERM/SIGINT


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
        self.net: torch.nn.Module | None = None
        self.ema: ModelEMA | None = None
        self.world = World()

    # ------------------------------------------------------------------ training
    def train(self, model: torch.nn.Module, training_params: Any, train_loader: Iterable,
              valid_loader: Iterable | None = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Train ``model``; returns the last epoch's record (``{"valid/Accuracy": ..., ...}``)."""
        params = parse_training_params(training_params)
        if launched_by_torchrun():
            self.device = join_process_group(self.device)
        self.world = current_world()
        # Ranks other than 0 stay quiet unless they fail; only rank 0 writes the log file.
        configure_console_logging(silent=params.silent_mode, errors_only=not self.world.is_rank_zero)
        log_handler = None
        if self.world.is_rank_zero:
            self.experiment_dir.mkdir(parents=True, exist_ok=True)
            log_handler = attach_log_file(self.experiment_dir)
        try:
            return self._train(model, params, train_loader, valid_loader, list(callbacks))
        finally:
            if log_handler is not None:
                logger.removeHandler(log_handler)
                log_handler.close()

    def _setup(self, model: torch.nn.Module, params: TrainingParams, train_loader: Iterable,
               valid_loader: Iterable | None) -> None:
        """Build everything the loop needs; every recipe mistake surfaces here, before the first step."""
        world = self.world
        seed_everything(params.seed + world.rank, params.deterministic)  # ranks draw different dropout masks
        self.params = params
        self.net = model.to(self.device)
        self.optimizer = build_optimizer(self.net, params)
        self.loss_fn = build_loss(params.loss, params.criterion_params)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)
        self.train_metrics = self._metrics(params.train_metrics_list, "training_hyperparams.train_metrics_list")
        self.valid_metrics = self._metrics(params.valid_metrics_list, "training_hyperparams.valid_metrics_list")
        self.full_valid_loader = valid_loader
        self.valid_loader = shard_for_evaluation(valid_loader, world.size, world.rank) if valid_loader else None
        self.train_loader = make_resumable(train_loader, params.seed, world.size, world.rank)
        self.recipe_yaml = _recipe_yaml(self.recipe)
        self.params_yaml = _recipe_yaml(params.to_dict())
        self.train_batches_per_epoch = _batches(self.train_loader, params.max_train_batches)
        self.valid_batches_per_epoch = _batches(self.valid_loader, params.max_valid_batches) if valid_loader else 0
        if not self.train_batches_per_epoch:
            raise RecipeError("The training dataloader is empty (or max_train_batches is 0).")
        if params.batch_accumulate < 1:
            raise RecipeError(f"training_hyperparams.batch_accumulate must be >= 1, got {params.batch_accumulate}.")
        # A trailing partial accumulation still steps, so no micro-batch is wasted.
        self.steps_per_epoch = math.ceil(self.train_batches_per_epoch / params.batch_accumulate)
        self.ema = build_ema(self.net, params, total_steps=self.steps_per_epoch * params.max_epochs)
        amp_dtype = amp_dtype_for(params, self.device)
        self.autocast = autocast_factory(self.device, amp_dtype)
        self.scaler = grad_scaler_for(self.device, amp_dtype)
        self.forward_net = wrap_model(self.net, world, self.device, params.sync_bn, params.find_unused_parameters)
        if params.torch_compile:
            self.forward_net = torch.compile(self.forward_net, **dict(params.torch_compile_options or {}))

    def _train(self, model: torch.nn.Module, params: TrainingParams, train_loader: Iterable,
               valid_loader: Iterable | None, extra_callbacks: list[Callback]) -> dict[str, float]:
        self._setup(model, params, train_loader, valid_loader)
        valid_loader = self.valid_loader
        callbacks = CallbackList(service_callbacks(params, self.world.is_rank_zero)
                                 + build_list(CALLBACKS, params.phase_callbacks, "training_hyperparams.phase_callbacks")
                                 + extra_callbacks)
        # Validation result names: metrics returning several values (and callbacks adding some) list them.
        self.valid_result_names = [name for key, metric in self.valid_metrics.items()
                                   for name in getattr(metric, "component_names", None) or [key]]
        self.valid_result_names += [name for cb in callbacks.callbacks for name in getattr(cb, "component_names", [])]
        watch = params.metric_to_watch.removeprefix("valid/")
        expected_names = expected_loss_names(params, self.loss_fn)
        if valid_loader is not None and expected_names is not None:
            check_metric_to_watch(watch, self.valid_result_names, expected_names)
        # An unnamed tuple-returning loss names its items only after one forward pass: check then.
        self._watch_check_pending = valid_loader is not None and expected_names is None
        ctx = PhaseContext(
            net=self.net, eval_net=self.ema.module if self.ema else self.net, ema=self.ema,
            optimizer=self.optimizer, training_params=params, device=self.device,
            experiment_dir=self.experiment_dir, max_epochs=params.max_epochs, steps_per_epoch=self.steps_per_epoch,
            metric_to_watch=watch, trainer=self, is_rank_zero=self.world.is_rank_zero,
        )
        point = None
        resume_path = resume_checkpoint_path(params, self.experiment_dir)
        if resume_path is not None:
            point = restore(self, ctx, callbacks, resume_path, describe_run(self.recipe, params),
                            params.resume_allow_changes)
            if point.epoch >= params.max_epochs:
                logger.info(f"{self.experiment_dir} already finished {point.epoch} epochs (max_epochs="
                            f"{params.max_epochs}): nothing to resume. Raise max_epochs to train further.")
                return point.record
            ctx.epoch = point.epoch
            logger.info(f"Resuming from {resume_path}: epoch {point.epoch + 1}, "
                        f"after {point.progress.start_batch} batches of it.")
        self._log_start(params)
        callbacks.on_training_start(ctx)
        if point is not None:
            put_back_rng(point)  # last, so the resumed steps draw exactly the numbers the original run drew
        record: dict[str, float] = point.record if point else {}
        self._last_record = record
        with StopRequests() as self._stops:
            for epoch in range(ctx.epoch, params.max_epochs):
                ctx.epoch = epoch
                progress = point.progress if point is not None and epoch == point.epoch else EpochProgress()
                record = self._run_epoch(ctx, callbacks, progress, valid_loader)
                if self._stop_requested(check=True):
                    raise TrainingInterrupted(self._stops.signum or 15, self.experiment_dir / LATEST)
                if ctx.stop_training:
                    logger.info(f"Training stopped early after epoch {epoch + 1}.")
                    break
        callbacks.on_training_end(ctx)
        return record

    def _run_epoch(self, ctx: PhaseContext, callbacks: CallbackList, progress: EpochProgress,
                   valid_loader: Iterable | None) -> dict[str, float]:
        params, epoch = self.params, ctx.epoch
        started = time.perf_counter() - progress.elapsed
        record = {"epoch": epoch}
        record.update(self._train_epoch(ctx, callbacks, progress, started))
        validate = valid_loader is not None and (
            (epoch + 1) % params.run_validation_freq == 0 or epoch + 1 == params.max_epochs)
        valid_names = [f"valid/{n}" for n in ctx.loss_names + self.valid_result_names]
        record.update(dict.fromkeys(valid_names, math.nan))
        if validate:
            broadcast_buffers(ctx.eval_net, self.world)
            record.update(self._evaluate(ctx.eval_net, valid_loader, self.valid_metrics,
                                         self.valid_batches_per_epoch, "valid", ctx, callbacks))
        record["epoch_time"] = time.perf_counter() - started
        ctx.epoch_record = record
        improved = validate and self._update_best(ctx, record, params)
        if improved:
            callbacks.on_validation_end_best_epoch(ctx)
        callbacks.on_epoch_end(ctx)
        self._last_record = record
        if params.save_model or self._stop_requested(check=True):
            # After on_epoch_end, so every callback's state for this epoch is saved.
            self._save(ctx, callbacks, record, improved)
        return record

    def _train_epoch(self, ctx: PhaseContext, callbacks: CallbackList, progress: EpochProgress,
                     started: float) -> dict[str, float]:
        net, device, optimizer, scaler = self.forward_net, self.device, self.optimizer, self.scaler
        params, loss_fn, metrics, autocast = self.params, self.loss_fn, self.train_metrics, self.autocast
        num_batches, accumulate = self.train_batches_per_epoch, params.batch_accumulate
        clip, save_every = params.clip_grad_norm, params.ckpt_every_n_steps
        batches = epoch_batches(self.train_loader, ctx.epoch, progress.start_batch)
        self.net.train()
        items = progress.items
        callbacks.on_train_loader_start(ctx)
        # The rates of the epoch's first step, once the schedule has set them (kept across a mid-epoch resume).
        progress.lrs = epoch_lrs = progress.lrs or current_lrs(optimizer)
        for batch_idx, batch in batches:
            if batch_idx >= num_batches:
                break
            inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
            ctx.batch_extras = to_device(batch[2], device) if len(batch) > 2 else None
            group_start = batch_idx - batch_idx % accumulate
            group_size = min(accumulate, num_batches - group_start)
            is_step = batch_idx + 1 == group_start + group_size
            ctx.batch_idx, ctx.inputs, ctx.targets, ctx.is_optimizer_step = batch_idx, inputs, targets, is_step
            callbacks.on_train_batch_start(ctx)
            with autocast():
                preds = net(inputs)
                loss, loss_items = split_loss_output(loss_fn(preds, targets))
            ctx.preds, ctx.loss, ctx.loss_items = preds, loss, loss_items
            if not ctx.loss_names:
                self._name_loss_items(ctx, loss_items)
            callbacks.on_train_batch_loss_end(ctx)
            # Dividing by the group size makes the accumulated gradient that of one group-sized batch.
            scaled = loss / group_size if group_size > 1 else loss
            with _skip_gradient_sync(net, not is_step):
                (scaler.scale(scaled) if scaler else scaled).backward()
            callbacks.on_train_batch_backward_end(ctx)
            if is_step:
                callbacks.on_train_batch_gradient_step_start(ctx)
                if clip:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ctx.global_step += 1
                if self.ema is not None:
                    self.ema.update(self.net)
                callbacks.on_train_batch_gradient_step_end(ctx)
            for metric in metrics.values():
                update_metric(metric, preds.detach(), targets, ctx.batch_extras)
            items.append(loss_items)
            callbacks.on_train_batch_end(ctx)
            if not is_step:
                continue
            # Under DDP the ranks agree on stopping every STOP_CHECK_STEPS steps (a collective); alone, every step.
            stop = self._stop_requested(check=not self.world.is_distributed
                                        or ctx.global_step % STOP_CHECK_STEPS == 0)
            if stop or (save_every and ctx.global_step % save_every == 0):
                progress.elapsed = time.perf_counter() - started
                self._save_mid_epoch(ctx, callbacks, batch_idx + 1, progress)
            if stop:
                raise TrainingInterrupted(self._stops.signum or 15, self.experiment_dir / LATEST)
        results = {**epoch_lrs, **_mean_items(items, ctx.loss_names, "train", self.world)}
        results.update(compute_metrics(metrics, "train"))
        ctx.metrics = results
        callbacks.on_train_loader_end(ctx)
        return results

    def _name_loss_items(self, ctx: PhaseContext, loss_items: torch.Tensor) -> None:
        ctx.loss_names = loss_item_names(self.loss_fn, self.params.loss_logging_items_names, loss_items.numel())
        if self._watch_check_pending:
            check_metric_to_watch(ctx.metric_to_watch, self.valid_result_names, ctx.loss_names)

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def _evaluate(self, net: torch.nn.Module, loader: Iterable, metrics: dict, max_batches: int | None,
                  prefix: str, ctx: PhaseContext | None = None, callbacks: CallbackList | None = None,
                  loss_fn: Any = "train", world: World | None = None) -> dict[str, float]:
        """One pass over ``loader``: loss items and metrics as ``{prefix/name: value}``.

        ``prefix`` "valid" fires the validation events, "test" the test events (when callbacks are given).
        Loss items are averaged per sample; under DDP each rank sees its own shard and the sums are reduced
        (``world``: the ranks taking part; a single-process World for rank-0-only evaluations).
        """
        world = world or getattr(self, "world", World())
        loss_fn = self.loss_fn if loss_fn == "train" else loss_fn
        phase = "validation" if prefix == "valid" else "test"
        fire = (lambda event: getattr(callbacks, f"on_{phase}_{event}")) if callbacks else (lambda event: _no_event)
        on_batch_start, on_batch_end = fire("batch_start"), fire("batch_end")
        ctx = ctx or PhaseContext(net=net, eval_net=net, device=self.device, trainer=self)
        autocast = getattr(self, "autocast", _no_autocast)
        was_training = net.training
        net.eval()
        item_sums: torch.Tensor | float = 0.0
        samples = 0
        fire("loader_start")(ctx)
        for batch_idx, batch in enumerate(loader):
            if max_batches is not None and batch_idx >= max_batches:
                break
            inputs, targets = to_device(batch[0], self.device), to_device(batch[1], self.device)
            ctx.batch_extras = to_device(batch[2], self.device) if len(batch) > 2 else None
            ctx.batch_idx, ctx.inputs, ctx.targets = batch_idx, inputs, targets
            batch_size = _batch_size(inputs)
            on_batch_start(ctx)
            with autocast():
                preds = net(inputs)
                if loss_fn is not None:
                    ctx.loss_items = split_loss_output(loss_fn(preds, targets))[1]
                    item_sums = item_sums + ctx.loss_items.float() * batch_size
            samples += batch_size
            ctx.preds = preds
            for metric in metrics.values():
                update_metric(metric, preds, targets, ctx.batch_extras)
            on_batch_end(ctx)
        results: dict[str, float] = {}
        if isinstance(item_sums, torch.Tensor):
            configured = self.params.loss_logging_items_names if loss_fn is getattr(self, "loss_fn", None) else None
            names = ctx.loss_names or loss_item_names(loss_fn, configured, item_sums.numel())
            totals = all_reduce_sum(torch.cat([item_sums, item_sums.new_tensor([samples])]), world)
            results = {f"{prefix}/{n}": v for n, v in zip(names, (totals[:-1] / totals[-1]).tolist(), strict=True)}
        results.update(compute_metrics(metrics, prefix))
        ctx.metrics = results
        fire("loader_end")(ctx)
        net.train(was_training)
        return results

    def evaluate(self, net: torch.nn.Module, loader: Iterable | None = None) -> dict[str, float]:
        """Validate ``net`` like the training run does (its validation loader, metrics and loss), no callbacks.

        Used for models built after training, such as ``average_model.pth``.
        """
        loader = loader if loader is not None else self.full_valid_loader
        metrics = self._metrics(self.params.valid_metrics_list, "training_hyperparams.valid_metrics_list")
        for metric in metrics.values():
            metric.sync_on_compute = False  # may run on rank 0 alone: no collective operations
        return self._evaluate(net.to(self.device), loader, metrics, self.params.max_valid_batches, "valid",
                              world=World())

    def test(self, model: torch.nn.Module, test_loader: Iterable, test_metrics_list: Any = ("Accuracy",),
             loss: Any = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Evaluate ``model`` on ``test_loader``; returns ``{"test/<metric>": value, ...}``."""
        metrics = self._metrics(list(test_metrics_list), "test_metrics_list")
        for metric in metrics.values():
            metric.sync_on_compute = False  # test() evaluates the loader it is given, in this process
        loss_fn = build_loss(loss) if loss is not None else None
        return self._evaluate(model.to(self.device), test_loader, metrics, None, "test",
                              callbacks=CallbackList(list(callbacks)), loss_fn=loss_fn, world=World())

    def _metrics(self, specs: Any, where: str) -> dict:
        return {name: metric.to(self.device) for name, metric in build_metrics(specs, where).items()}

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

    def _save(self, ctx: PhaseContext, callbacks: CallbackList, record: dict[str, float], improved: bool) -> None:
        state = capture(self, ctx, callbacks, record, next_epoch=ctx.epoch + 1, next_batch=0, progress=None)
        names = [LATEST] + [BEST] * improved
        if ctx.epoch in self.params.save_ckpt_epoch_list:
            names.append(f"ckpt_epoch_{ctx.epoch}.pth")
        self._write(state, names)

    def _save_mid_epoch(self, ctx: PhaseContext, callbacks: CallbackList, next_batch: int,
                        progress: EpochProgress) -> None:
        record = getattr(self, "_last_record", {})
        self._write(capture(self, ctx, callbacks, record, ctx.epoch, next_batch, progress), [LATEST])

    def _stop_requested(self, check: bool) -> bool:
        """Whether a SIGTERM/SIGINT asks to stop; under DDP every rank takes the decision together."""
        if not check:
            return False
        return any_rank(self._stops.signum is not None, self.world, self.device)

    def _write(self, state: dict[str, Any], names: list[str]) -> None:
        if self.world.is_rank_zero:
            write_checkpoints(state, self.experiment_dir, names)

    def _log_start(self, params: TrainingParams) -> None:
        num_params = sum(p.numel() for p in self.net.parameters())
        extras = [name for name, on in (("EMA", params.ema), ("mixed precision", params.mixed_precision),
                                        ("torch.compile", params.torch_compile)) if on]
        logger.info(
            f"Training {type(self.net).__name__} ({num_params / 1e6:.2f}M parameters) on {self.device} for "
            f"{params.max_epochs} epochs, {self.steps_per_epoch} steps/epoch"
            f"{' with ' + ', '.join(extras) if extras else ''}; outputs in {self.experiment_dir}"
        )


def _no_event(context: PhaseContext) -> None:
    return None


def _no_autocast() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _skip_gradient_sync(net: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` on micro-batches that only accumulate, so gradients are all-reduced once per step."""
    no_sync = getattr(net, "no_sync", None)
    return no_sync() if skip and no_sync is not None else contextlib.nullcontext()


def _batches(loader: Iterable | None, limit: int | None) -> int | None:
    try:
        count = len(loader)  # type: ignore[arg-type]
    except TypeError:
        count = None
    if limit is not None:
        count = limit if count is None else min(count, limit)
    return count


def _mean_items(items: list[torch.Tensor], names: list[str], prefix: str, world: World) -> dict[str, float]:
    """The epoch mean of each loss item (mean of the batch values), averaged over the ranks."""
    if not items:
        return {}
    means = all_reduce_mean(torch.stack(items).float().mean(dim=0), world).tolist()
    return {f"{prefix}/{name}": value for name, value in zip(names, means, strict=True)}


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    return len(inputs)


def _recipe_yaml(recipe: Any) -> str | None:
    if recipe is None:
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(recipe if OmegaConf.is_config(recipe) else OmegaConf.create(recipe), resolve=True)
