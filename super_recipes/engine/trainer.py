"""The training loop: ``Trainer(experiment_name, ckpt_root_dir).train(model=, training_params=, ...)``.

One readable loop built from overridable units: :meth:`Trainer.run_epoch` (train, validate, pick the best,
save), :meth:`Trainer.train_step` (one micro-batch: forward, loss, :meth:`Trainer.update_params`) and
:meth:`Trainer.update_params` (backward with AMP scaling and accumulation; on the last micro-batch of a group,
unscale, clip, ``optimizer.step()``, EMA). Evaluation is its own unit (:mod:`.evaluation`) and the loop's state
one dataclass (:mod:`.loop_state`). Everything optional (schedules, logging, user callbacks) hangs off the
callback events. Per step the loop adds no host/device synchronisation: loss items stay on the device until
the epoch ends or a logger asks for them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from super_recipes.callbacks.base import Callback, CallbackList, PhaseContext
from super_recipes.callbacks.loggers import current_lrs
from super_recipes.callbacks.services import service_callbacks
from super_recipes.config.instantiate import instantiate_training
from super_recipes.config.training_params import TrainingParams, parse_training_params
from super_recipes.data.samplers import epoch_batches, make_resumable, shard_for_evaluation
from super_recipes.engine.checkpoints import BEST, LATEST, write_checkpoints
from super_recipes.engine.devices import resolve_device, to_device
from super_recipes.engine.distributed import World, all_reduce_mean, any_rank, broadcast_buffers, wrap_model
from super_recipes.engine.ema import ModelEMA, build_ema
from super_recipes.engine.environment import RunEnvironment
from super_recipes.engine.evaluation import Evaluation, EvaluationEvents, compute_alone, detached
from super_recipes.engine.interrupts import StopRequests, TrainingInterrupted
from super_recipes.engine.loop_state import LoopState
from super_recipes.engine.precise_bn import recompute_batchnorm_statistics
from super_recipes.engine.precision import amp_dtype_for, autocast_factory, grad_scaler_for
from super_recipes.engine.reproducibility import seed_everything
from super_recipes.engine.resume import describe_run, resume_checkpoint_path
from super_recipes.engine.sanity import (
    check_class_count,
    check_first_batch,
    explain_first_batch_failure,
    explain_loss_failure,
)
from super_recipes.engine.state import capture, put_back_rng, restore
from super_recipes.errors import RecipeError
from super_recipes.losses import expected_loss_names, loss_item_names, split_loss_output
from super_recipes.metrics import build_metrics, check_metric_to_watch, compute_metrics, update_metric
from super_recipes.optimizers import build_optimizer

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

    # ------------------------------------------------------------------------------------------------ training
    def train(self, model: torch.nn.Module, training_params: Any, train_loader: Iterable,
              valid_loader: Iterable | None = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Train ``model``; returns the last epoch's record (``{"valid/Accuracy": ..., ...}``).

        ``training_params`` is the ``training_hyperparams`` mapping (names or, in Python, objects) or a parsed
        :class:`~super_recipes.config.training_params.TrainingParams`. The training loader's sampler is replaced
        by a resumable order seeded by ``seed + epoch`` (same batches, workers and collate function).
        """
        params = parse_training_params(training_params)
        with RunEnvironment(self, params, model) as environment:
            self.recipe_yaml, self.params_yaml = environment.recipe_yaml, environment.params_yaml
            return self._fit(model, params, train_loader, valid_loader, list(callbacks))

    def _setup(self, model: torch.nn.Module, params: TrainingParams, train_loader: Iterable,
               valid_loader: Iterable | None, extra_callbacks: list[Callback]) -> CallbackList:
        """Build everything the loop needs; every mistake surfaces here, before the first step."""
        world = self.world
        seed_everything(params.seed + world.rank, params.deterministic)  # ranks draw different dropout masks
        components = instantiate_training(params)
        self.params = params
        self.net = model.to(self.device)
        self.optimizer = build_optimizer(self.net, params)
        self.loss_fn = components.loss.to(self.device) if isinstance(components.loss, torch.nn.Module) \
            else components.loss
        self.train_metrics = _to_device(components.train_metrics, self.device)
        for metric in self.train_metrics.values():
            if hasattr(metric, "persistent"):
                metric.persistent(True)  # its state_dict then carries the partial epoch into checkpoints
        self.valid_metrics = _to_device(components.valid_metrics, self.device)
        self.pre_prediction_callback = components.pre_prediction_callback
        # Batches from a CPU loader already are where a CPU run computes: skip the per-step .to() calls.
        self._move_to_device = _unchanged if self.device.type == "cpu" else partial(to_device, device=self.device)
        self.full_valid_loader = valid_loader
        self.valid_loader = shard_for_evaluation(valid_loader, world.size, world.rank) if valid_loader else None
        self.train_loader = make_resumable(train_loader, params.seed, world.size, world.rank)
        check_class_count(self.net, getattr(train_loader, "dataset", None), self.recipe)
        self.train_batches_per_epoch = _batches(self.train_loader, params.max_train_batches)
        self.valid_batches_per_epoch = _batches(self.valid_loader, params.max_valid_batches) if valid_loader else 0
        if not self.train_batches_per_epoch:
            raise RecipeError("The training dataloader is empty.")
        # A trailing partial accumulation still steps, so no micro-batch is wasted.
        self.steps_per_epoch = math.ceil(self.train_batches_per_epoch / params.batch_accumulate)
        self.ema = build_ema(self.net, params, total_steps=self.steps_per_epoch * params.max_epochs)
        amp_dtype = amp_dtype_for(params, self.device)
        self.autocast = autocast_factory(self.device, amp_dtype)
        self.scaler = grad_scaler_for(self.device, amp_dtype)
        self.forward_net = wrap_model(self.net, world, self.device, params.sync_bn, params.find_unused_parameters)
        if params.torch_compile:
            self.forward_net = torch.compile(self.forward_net, **dict(params.torch_compile_options or {}))
        callbacks = CallbackList(service_callbacks(params, world.is_rank_zero, components.lr_schedule)
                                 + components.callbacks + extra_callbacks)
        # Validation result names: metrics returning several values (and callbacks adding some) list them.
        self.valid_result_names = [name for key, metric in self.valid_metrics.items()
                                   for name in getattr(metric, "component_names", None) or [key]]
        self.valid_result_names += [name for cb in callbacks.callbacks for name in getattr(cb, "component_names", [])]
        self.metric_to_watch = params.metric_to_watch.removeprefix("valid/")
        expected_names = expected_loss_names(params, self.loss_fn)
        if valid_loader is not None and expected_names is not None:
            check_metric_to_watch(self.metric_to_watch, self.valid_result_names, expected_names)
        # An unnamed tuple-returning loss names its items only after one forward pass: check then.
        self._watch_check_pending = valid_loader is not None and expected_names is None
        self.run_description = describe_run(self.recipe, params)
        return callbacks

    def _fit(self, model: torch.nn.Module, params: TrainingParams, train_loader: Iterable,
             valid_loader: Iterable | None, extra_callbacks: list[Callback]) -> dict[str, float]:
        callbacks = self._setup(model, params, train_loader, valid_loader, extra_callbacks)
        self.state = state = LoopState()
        ctx = PhaseContext(
            net=self.net, eval_net=self.ema.module if self.ema else self.net, ema=self.ema,
            optimizer=self.optimizer, training_params=params, device=self.device,
            experiment_dir=self.experiment_dir, max_epochs=params.max_epochs, steps_per_epoch=self.steps_per_epoch,
            metric_to_watch=self.metric_to_watch, trainer=self, is_rank_zero=self.world.is_rank_zero, state=state,
        )
        rng = None
        resume_path = resume_checkpoint_path(params, self.experiment_dir)
        if resume_path is not None:
            rng = restore(self, state, callbacks, resume_path, self.run_description, params.resume_allow_changes,
                          params.load_opt_params)
            if state.epoch >= params.max_epochs:
                logger.info(f"{self.experiment_dir} already finished {state.epoch} epochs (max_epochs="
                            f"{params.max_epochs}): nothing to resume. Raise max_epochs to train further.")
                return state.last_record
            logger.info(f"Resuming from {resume_path}: epoch {state.epoch + 1}, "
                        f"after {state.start_batch} batches of it.")
        self._log_start(params)
        callbacks.on_training_start(ctx)
        put_back_rng(rng)  # last, so the resumed steps draw exactly the numbers the original run drew
        record = state.last_record
        with StopRequests() as self._stops:
            for epoch in range(state.epoch, params.max_epochs):
                state.start_epoch(epoch)
                record = self.run_epoch(ctx, callbacks)
                if self._stop_requested(check=True):
                    raise TrainingInterrupted(self._stops.signum or 15, self.experiment_dir / LATEST)
                if state.stop_training:
                    logger.info(f"Training stopped early after epoch {epoch + 1}.")
                    break
        callbacks.on_training_end(ctx)
        return record

    def run_epoch(self, ctx: PhaseContext, callbacks: CallbackList) -> dict[str, float]:
        """One epoch: train, validate when due, update the best metric, fire the epoch events, save."""
        params, state = self.params, self.state
        started = time.perf_counter() - state.epoch_elapsed
        record: dict[str, float] = {"epoch": state.epoch}
        record.update(self.train_epoch(ctx, callbacks, started))
        validate = self.valid_loader is not None and (
            (state.epoch + 1) % params.run_validation_freq == 0 or state.epoch + 1 == params.max_epochs)
        record.update(dict.fromkeys((f"valid/{n}" for n in state.loss_names + self.valid_result_names), math.nan))
        if validate:
            record.update(self.validate(ctx, callbacks))
        record["epoch_time"] = time.perf_counter() - started
        ctx.epoch_record = record
        improved = validate and self._update_best(record)
        if improved:
            callbacks.on_validation_end_best_epoch(ctx)
        callbacks.on_epoch_end(ctx)
        state.last_record = record
        if params.save_model or self._stop_requested(check=True):
            # After on_epoch_end, so every callback's state for this epoch is saved.
            names = [LATEST] + [BEST] * improved
            if state.epoch in params.save_ckpt_epoch_list:
                names.append(f"ckpt_epoch_{state.epoch}.pth")
            self._write(capture(self, state, callbacks, state.epoch + 1, 0, record), names)
        return record

    def train_epoch(self, ctx: PhaseContext, callbacks: CallbackList, started: float) -> dict[str, float]:
        """The training batches of ``state.epoch``; returns the epoch's rates, mean loss items and metrics."""
        params, state, accumulate = self.params, self.state, self.params.batch_accumulate
        num_batches, save_every = self.train_batches_per_epoch, params.ckpt_every_n_steps
        check_every = 1 if not self.world.is_distributed else STOP_CHECK_STEPS
        self.net.train()
        callbacks.on_train_loader_start(ctx)
        # The rates of the epoch's first step, once the schedule has set them (kept across a mid-epoch resume).
        state.epoch_lrs = state.epoch_lrs or current_lrs(self.optimizer)
        for batch_idx, batch in epoch_batches(self.train_loader, state.epoch, state.start_batch, num_batches):
            group_start = batch_idx - batch_idx % accumulate
            group_size = min(accumulate, num_batches - group_start)
            is_step = batch_idx + 1 == group_start + group_size
            self.train_step(ctx, callbacks, batch_idx, batch, group_size, is_step)
            if not is_step:
                continue
            # Under DDP the ranks agree on stopping every STOP_CHECK_STEPS steps (a collective); alone, every step.
            stop = self._stop_requested(check=state.global_step % check_every == 0)
            if stop or (save_every and state.global_step % save_every == 0):
                state.epoch_elapsed = time.perf_counter() - started
                self._write(capture(self, state, callbacks, state.epoch, batch_idx + 1, state.last_record),
                            [LATEST])
            if stop:
                raise TrainingInterrupted(self._stops.signum or 15, self.experiment_dir / LATEST)
        results = {**state.epoch_lrs, **self._mean_loss_items()}
        results.update(compute_metrics(self.train_metrics, "train"))
        ctx.metrics = results
        callbacks.on_train_loader_end(ctx)
        return results

    def train_step(self, ctx: PhaseContext, callbacks: CallbackList, batch_idx: int, batch: Any, group_size: int,
                   is_step: bool) -> None:
        """One micro-batch: to the device, ``pre_prediction_callback``, forward, loss, :meth:`update_params`,
        training metrics."""
        move = self._move_to_device
        inputs, targets = move(batch[0]), move(batch[1])
        ctx.batch_extras = move(batch[2]) if len(batch) > 2 else None
        if self.pre_prediction_callback is not None:
            inputs, targets = self.pre_prediction_callback(inputs, targets, batch_idx)
        ctx.batch_idx, ctx.inputs, ctx.targets, ctx.is_optimizer_step = batch_idx, inputs, targets, is_step
        callbacks.on_train_batch_start(ctx)
        first = not self.state.loss_names  # the run's first batch (in this process)
        with self.autocast():
            try:
                preds = self.forward_net(inputs)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                if first:
                    explain_first_batch_failure("model", err, inputs)
                raise
            try:
                loss, loss_items = split_loss_output(self.loss_fn(preds, targets))
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                explain_loss_failure(err, preds, targets, self.recipe)
                if first:
                    explain_first_batch_failure("loss", err, preds)
                raise
        if first:
            check_first_batch(preds, targets, self.recipe)
            self._name_loss_items(ctx, loss_items)
        ctx.preds, ctx.loss, ctx.loss_items = preds, loss, loss_items
        callbacks.on_train_batch_loss_end(ctx)
        self.update_params(ctx, callbacks, loss, group_size, is_step)
        for metric in self.train_metrics.values():
            update_metric(metric, detached(preds), targets, ctx.batch_extras)
        self.state.loss_items.append(loss_items)
        callbacks.on_train_batch_end(ctx)

    def update_params(self, ctx: PhaseContext, callbacks: CallbackList, loss: torch.Tensor, group_size: int,
                      is_step: bool) -> None:
        """Backward of this micro-batch and, on the last micro-batch of a group, the optimizer step.

        The loss is divided by the group size (``batch_accumulate``), so the accumulated gradient is that of one
        group-sized batch; under AMP float16 it is scaled by the GradScaler and unscaled before clipping. After
        the step: gradients zeroed, ``global_step`` counted, the EMA updated. Override this for optimizers that
        need their own step (SAM, closures...).
        """
        scaler, optimizer = self.scaler, self.optimizer
        scaled = loss / group_size if group_size > 1 else loss
        if is_step:
            (scaler.scale(scaled) if scaler else scaled).backward()
        else:
            with _skip_gradient_sync(self.forward_net):
                (scaler.scale(scaled) if scaler else scaled).backward()
        callbacks.on_train_batch_backward_end(ctx)
        if not is_step:
            return
        callbacks.on_train_batch_gradient_step_start(ctx)
        if self.params.clip_grad_norm:
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.params.clip_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        if self.ema is not None:
            self.ema.update(self.net)
        callbacks.on_train_batch_gradient_step_end(ctx)

    def _name_loss_items(self, ctx: PhaseContext, loss_items: torch.Tensor) -> None:
        self.state.loss_names = loss_item_names(self.loss_fn, self.params.loss_logging_items_names,
                                                loss_items.numel())
        if self._watch_check_pending:
            check_metric_to_watch(self.metric_to_watch, self.valid_result_names, self.state.loss_names)

    def _mean_loss_items(self) -> dict[str, float]:
        """The epoch mean of each loss item (mean of the batch values), averaged over the ranks."""
        items = self.state.loss_items
        if not items:
            return {}
        means = all_reduce_mean(torch.stack(items).float().mean(dim=0), self.world).tolist()
        return {f"train/{name}": value for name, value in zip(self.state.loss_names, means, strict=True)}

    # ---------------------------------------------------------------------------------------------- evaluation
    def validate(self, ctx: PhaseContext, callbacks: CallbackList) -> dict[str, float]:
        """Validate the selected model (the EMA model when ``ema`` is on) with the validation events."""
        broadcast_buffers(ctx.eval_net, self.world)
        if self.params.precise_bn:
            recompute_batchnorm_statistics(ctx.eval_net, self, ctx)
        evaluation = Evaluation(
            self.valid_metrics, "valid", self.device, self.loss_fn, self._validation_loss_names, self.autocast,
            self.params.max_valid_batches, self.world, EvaluationEvents.validation(callbacks))
        return evaluation.run(ctx.eval_net, self.valid_loader, ctx)

    def _validation_loss_names(self, count: int) -> list[str]:
        return self.state.loss_names or loss_item_names(self.loss_fn, self.params.loss_logging_items_names, count)

    def evaluate(self, net: torch.nn.Module, loader: Iterable | None = None) -> dict[str, float]:
        """Validate ``net`` like the training run does (its validation loader, metrics and loss), no callbacks.

        Used for models built after training, such as ``average_model.pth``; runs in this process alone.
        """
        metrics = copy.deepcopy(self.valid_metrics)  # fresh states; the training run's metrics stay untouched
        for metric in metrics.values():
            metric.reset()
            compute_alone(metric)  # may run on rank 0 alone: no collective operations
        evaluation = Evaluation(metrics, "valid", self.device, self.loss_fn, self._validation_loss_names,
                                self.autocast, self.params.max_valid_batches)
        loader = loader if loader is not None else self.full_valid_loader
        return evaluation.run(net.to(self.device), loader, PhaseContext(net=net, eval_net=net, trainer=self))

    def test(self, model: torch.nn.Module, test_loader: Iterable, test_metrics_list: Any = ("Accuracy",),
             loss: Any = None, callbacks: Iterable[Callback] = ()) -> dict[str, float]:
        """Evaluate ``model`` on ``test_loader``; returns ``{"test/<metric>": value, ...}``.

        ``test_metrics_list`` takes names, specs or metric objects; ``loss`` a name, spec or loss object.
        """
        from super_recipes.losses import build_loss

        metrics = _to_device(build_metrics(test_metrics_list, "test_metrics_list"), self.device)
        for metric in metrics.values():
            compute_alone(metric)  # test() evaluates the loader it is given, in this process
        loss_fn = build_loss(loss) if loss is not None else None
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn = loss_fn.to(self.device)
        evaluation = Evaluation(metrics, "test", self.device, loss_fn,
                                lambda count: loss_item_names(loss_fn, None, count),
                                getattr(self, "autocast", contextlib.nullcontext),
                                events=EvaluationEvents.test(CallbackList(list(callbacks))))
        model = model.to(self.device)
        return evaluation.run(model, test_loader, PhaseContext(net=model, eval_net=model, device=self.device,
                                                               trainer=self))

    # -------------------------------------------------------------------------------------------- bookkeeping
    def _update_best(self, record: dict[str, float]) -> bool:
        value = record.get(f"valid/{self.metric_to_watch}", math.nan)
        if math.isnan(value):
            return False
        best = self.state.best_metric
        better = best is None or (value > best if self.params.greater_metric_to_watch_is_better else value < best)
        if better:
            self.state.best_metric = value
        return better

    def _stop_requested(self, check: bool) -> bool:
        """Whether a SIGTERM/SIGINT asks to stop; under DDP every rank takes the decision together."""
        if not check:
            return False
        return any_rank(self._stops.signum is not None, self.world, self.device)

    def _write(self, checkpoint: dict[str, Any], names: list[str]) -> None:
        if self.world.is_rank_zero:
            write_checkpoints(checkpoint, self.experiment_dir, names)

    def _log_start(self, params: TrainingParams) -> None:
        num_params = sum(p.numel() for p in self.net.parameters())
        extras = [name for name, on in (("EMA", params.ema), ("mixed precision", params.mixed_precision),
                                        ("torch.compile", params.torch_compile)) if on]
        logger.info(
            f"Training {type(self.net).__name__} ({num_params / 1e6:.2f}M parameters) on {self.device} for "
            f"{params.max_epochs} epochs, {self.steps_per_epoch} steps/epoch"
            f"{' with ' + ', '.join(extras) if extras else ''}; outputs in {self.experiment_dir}"
        )


def _unchanged(batch_part: Any) -> Any:
    return batch_part


def _to_device(metrics: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {name: m.to(device) if hasattr(m, "to") else m for name, m in metrics.items()}


def _skip_gradient_sync(net: torch.nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` on micro-batches that only accumulate, so gradients are all-reduced once per step."""
    no_sync = getattr(net, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def _batches(loader: Iterable | None, limit: int | None) -> int | None:
    try:
        count = len(loader)  # type: ignore[arg-type]
    except TypeError:
        count = None
    if limit is not None:
        count = limit if count is None else min(count, limit)
    return count
