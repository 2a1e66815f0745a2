"""What a checkpoint holds so a run continues bit-exactly, and how a resumed run puts it back.

A checkpoint is a point *between* optimizer steps: either the end of an epoch or, with ``ckpt_every_n_steps``
or a SIGTERM, the middle of one. Beyond weights and optimizer state it keeps where to continue (epoch and
micro-batch), the epoch's partial loss sums and metric states (so ``metrics.csv`` is identical), every callback's
state (LR scheduler position, early stopping, averaging), EMA weights and step, the grad scaler, the best metric
and the RNG states. The data order needs no state of its own: :mod:`super_recipes.data.samplers` makes every
batch a function of (seed, epoch, position).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from super_recipes.callbacks.base import CallbackList, PhaseContext
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.engine.distributed import gather_to_all
from super_recipes.errors import RecipeError
from super_recipes.engine.reproducibility import restore_rng_states, rng_states
from super_recipes.engine.resume import check_same_run

logger = logging.getLogger("super_recipes")


@dataclass
class EpochProgress:
    """The running state of the epoch in progress (what a mid-epoch checkpoint must carry)."""

    start_batch: int = 0  # micro-batches of this epoch already trained before this process started
    items: list[torch.Tensor] = field(default_factory=list)  # per-batch loss items so far
    lrs: dict[str, float] = field(default_factory=dict)  # the rates of the epoch's first step
    elapsed: float = 0.0  # seconds spent on this epoch before this process started


def capture(trainer: Any, ctx: PhaseContext, callbacks: CallbackList, record: dict[str, float],
            next_epoch: int, next_batch: int, progress: EpochProgress | None) -> dict[str, Any]:
    """The checkpoint dict for the current point of the run (continue at ``next_epoch``, ``next_batch``)."""
    state: dict[str, Any] = {
        "net": trainer.net.state_dict(),
        "acc": ctx.best_metric,
        "epoch": ctx.epoch,
        "global_step": ctx.global_step,
        "metric_to_watch": ctx.metric_to_watch,
        "metrics": record,
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "callbacks": callbacks.state_dict(),
        "recipe": trainer.recipe_yaml,
        "training_params": trainer.params_yaml,
        "resume": {"epoch": next_epoch, "batch": next_batch},
    }
    # What differs between ranks (RNG streams, their share of the epoch's sums) is kept per rank.
    rank_state: dict[str, Any] = {"rng": rng_states()}
    if progress is not None and next_batch > 0:
        state["resume"].update(lrs=progress.lrs, elapsed=progress.elapsed, loss_names=list(ctx.loss_names))
        rank_state["items"] = torch.stack(progress.items).cpu() if progress.items else None
        rank_state["train_metrics"] = {
            name: {"state": _to_cpu(m.metric_state), "updates": m._update_count}
            for name, m in trainer.train_metrics.items()}
    state["rank_states"] = gather_to_all(rank_state, trainer.world)
    if trainer.ema is not None:
        state["ema_net"], state["ema_updates"] = trainer.ema.module.state_dict(), trainer.ema.updates
    if trainer.scaler is not None:
        state["scaler_state_dict"] = trainer.scaler.state_dict()
    return state


@dataclass
class ResumePoint:
    epoch: int
    progress: EpochProgress
    rng: dict[str, Any]
    record: dict[str, float]


def restore(trainer: Any, ctx: PhaseContext, callbacks: CallbackList, path: Any, current_run: dict[str, Any],
            allow_changes: bool) -> ResumePoint:
    """Load ``path`` into the trainer, context and callbacks; returns where to continue."""
    state = load_checkpoint(path)
    saved_run = _run_description(state)
    if saved_run is not None:
        changed = check_same_run(saved_run, current_run, path, allow_changes)
        if changed:
            logger.warning(f"Resuming with changed keys (resume_allow_changes): {', '.join(changed)}")
    trainer.net.load_state_dict(state["net"])
    trainer.optimizer.load_state_dict(state["optimizer_state_dict"])
    if trainer.ema is not None and "ema_net" in state:
        trainer.ema.load_state_dict({"net": state["ema_net"], "updates": state["ema_updates"]})
    if trainer.scaler is not None and "scaler_state_dict" in state:
        trainer.scaler.load_state_dict(state["scaler_state_dict"])
    callbacks.load_state_dict(state.get("callbacks", {}))
    ctx.global_step, ctx.best_metric = int(state["global_step"]), state.get("acc")
    resume = state.get("resume") or {"epoch": int(state["epoch"]) + 1, "batch": 0}
    rank_states = state.get("rank_states") or [{}]
    world = trainer.world
    if len(rank_states) != world.size:
        raise RecipeError(f"Cannot resume from {path}: it was written by {len(rank_states)} process(es) and this "
                          f"run has {world.size}; resume with the same num_gpus.")
    mine = rank_states[world.rank]
    progress = EpochProgress(start_batch=int(resume["batch"]))
    if progress.start_batch:
        items = mine.get("items")
        progress.items = list(items.to(trainer.device).unbind(0)) if items is not None else []
        progress.lrs, progress.elapsed = dict(resume.get("lrs", {})), float(resume.get("elapsed", 0.0))
        ctx.loss_names = list(resume.get("loss_names", []))
        for name, saved in mine.get("train_metrics", {}).items():
            metric = trainer.train_metrics[name]
            for key, value in saved["state"].items():
                setattr(metric, key, value.to(trainer.device) if isinstance(value, torch.Tensor) else value)
            metric._update_count = saved["updates"]  # torchmetrics warns on compute() when this is 0
    return ResumePoint(int(resume["epoch"]), progress, mine.get("rng"), dict(state.get("metrics") or {}))


def put_back_rng(point: ResumePoint) -> None:
    """Restore the RNG states of the checkpoint: call right before the first resumed step."""
    if point.rng is not None:
        restore_rng_states(point.rng)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _run_description(state: dict[str, Any]) -> dict[str, Any] | None:
    from omegaconf import OmegaConf

    if state.get("recipe"):
        return OmegaConf.to_container(OmegaConf.create(state["recipe"]))
    if state.get("training_params"):
        return {"training_hyperparams": OmegaConf.to_container(OmegaConf.create(state["training_params"]))}
    return None
