"""What a checkpoint holds so a run continues bit-exactly, and how a resumed run puts it back.

A checkpoint is a point *between* optimizer steps: either the end of an epoch or, with ``ckpt_every_n_steps``
or a SIGTERM, the middle of one. Beyond weights and optimizer state it keeps the loop state
(:class:`~super_recipes.engine.loop_state.LoopState`: epoch, step, best metric, the epoch's partial loss sums),
the training metrics' states, every callback's state (LR scheduler position, early stopping, averaging), EMA
weights and step, the grad scaler and the RNG states. Every component is captured through its public
``state_dict``. The data order needs no state of its own: :mod:`super_recipes.data.samplers` makes every batch a
function of (seed, epoch, position).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from super_recipes import __version__
from super_recipes.callbacks.base import CallbackList
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.engine.distributed import gather_to_all
from super_recipes.engine.loop_state import LoopState
from super_recipes.engine.reproducibility import restore_rng_states, rng_states
from super_recipes.engine.resume import check_same_run
from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")

# Keys every training checkpoint written by this package has (a plain state dict or another framework's
# checkpoint lacks them, and cannot be resumed from).
TRAINING_KEYS = ("net", "optimizer_state_dict", "global_step", "resume")


def capture(trainer: Any, state: LoopState, callbacks: CallbackList, next_epoch: int, next_batch: int,
            record: dict[str, float]) -> dict[str, Any]:
    """The checkpoint dict for the current point of the run (continue at ``next_epoch``, ``next_batch``)."""
    checkpoint: dict[str, Any] = {
        "super_recipes": __version__,
        "net": trainer.net.state_dict(),
        "acc": state.best_metric,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "metric_to_watch": trainer.metric_to_watch,
        "metrics": record,
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "callbacks": callbacks.state_dict(),
        "recipe": trainer.recipe_yaml,
        "training_params": trainer.params_yaml,
        "run": trainer.run_description,
        "resume": {"epoch": next_epoch, "batch": next_batch},
    }
    # What differs between ranks (RNG streams, their share of the epoch's sums) is kept per rank.
    rank_state: dict[str, Any] = {"rng": rng_states()}
    if next_batch > 0:
        checkpoint["resume"].update(lrs=state.epoch_lrs, elapsed=state.epoch_elapsed,
                                    loss_names=list(state.loss_names))
        rank_state["items"] = torch.stack(state.loss_items).cpu() if state.loss_items else None
        rank_state["train_metrics"] = {name: _to_cpu(m.state_dict()) for name, m in trainer.train_metrics.items()
                                       if hasattr(m, "state_dict")}
    checkpoint["rank_states"] = gather_to_all(rank_state, trainer.world)
    if trainer.ema is not None:
        checkpoint["ema_net"], checkpoint["ema_updates"] = trainer.ema.module.state_dict(), trainer.ema.updates
    if trainer.scaler is not None:
        checkpoint["scaler_state_dict"] = trainer.scaler.state_dict()
    if hasattr(trainer.pre_prediction_callback, "state_dict"):
        checkpoint["pre_prediction_callback"] = trainer.pre_prediction_callback.state_dict()
    return checkpoint


def restore(trainer: Any, state: LoopState, callbacks: CallbackList, path: Any, current_run: dict[str, Any],
            allow_changes: bool, load_optimizer: bool = True) -> dict[str, Any] | None:
    """Load ``path`` into the trainer, the loop state and the callbacks; returns this rank's RNG states, to be
    put back with :func:`put_back_rng` right before the first resumed step."""
    checkpoint = load_checkpoint(path)
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        hint = " It holds weights: to start from them, use checkpoint_params.checkpoint_path instead." \
            if "net" in checkpoint or any(isinstance(v, torch.Tensor) for v in checkpoint.values()) else ""
        raise RecipeError(f"Cannot resume from {path}: it is not a super_recipes training checkpoint (no "
                          f"{', '.join(missing)}).{hint}")
    saved_run = _run_description(checkpoint)
    if saved_run is not None:
        changed = check_same_run(saved_run, current_run, path, allow_changes)
        if changed:
            logger.warning(f"Resuming with changed keys (resume_allow_changes): {', '.join(changed)}")
    _load_weights(trainer.net, checkpoint["net"], path)
    if load_optimizer:
        trainer.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    else:
        logger.info("load_opt_params is false: the optimizer starts afresh on the restored weights.")
    if trainer.ema is not None and "ema_net" in checkpoint:
        trainer.ema.load_state_dict({"net": checkpoint["ema_net"], "updates": checkpoint["ema_updates"]})
    if trainer.scaler is not None and "scaler_state_dict" in checkpoint:
        trainer.scaler.load_state_dict(checkpoint["scaler_state_dict"])
    callbacks.load_state_dict(checkpoint.get("callbacks", {}))
    if "pre_prediction_callback" in checkpoint and hasattr(trainer.pre_prediction_callback, "load_state_dict"):
        trainer.pre_prediction_callback.load_state_dict(checkpoint["pre_prediction_callback"])
    state.global_step, state.best_metric = int(checkpoint["global_step"]), checkpoint.get("acc")
    resume = checkpoint.get("resume") or {"epoch": int(checkpoint["epoch"]) + 1, "batch": 0}
    rank_states = checkpoint.get("rank_states") or [{}]
    world = trainer.world
    if len(rank_states) != world.size:
        raise RecipeError(f"Cannot resume from {path}: it was written by {len(rank_states)} process(es) and this "
                          f"run has {world.size}; resume with the same num_gpus.")
    mine = rank_states[world.rank]
    state.epoch, state.start_batch = int(resume["epoch"]), int(resume["batch"])
    state.last_record = dict(checkpoint.get("metrics") or {})
    if state.start_batch:
        items = mine.get("items")
        state.loss_items = list(items.to(trainer.device).unbind(0)) if items is not None else []
        state.epoch_lrs, state.epoch_elapsed = dict(resume.get("lrs", {})), float(resume.get("elapsed", 0.0))
        state.loss_names = list(resume.get("loss_names", []))
        for name, saved in mine.get("train_metrics", {}).items():
            trainer.train_metrics[name].load_state_dict(saved)
    return mine.get("rng")


def put_back_rng(rng: dict[str, Any] | None) -> None:
    """Restore the RNG states of the checkpoint: call right before the first resumed step."""
    if rng is not None:
        restore_rng_states(rng)


def _load_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor], path: Any) -> None:
    """``load_state_dict`` with a short report of the first mismatched keys instead of torch's wall of text."""
    own = net.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [f"{k} {tuple(weights[k].shape)} -> {tuple(v.shape)}" for k, v in own.items()
                if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or reshaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                                     ("other shapes", reshaped)) if keys]
        raise RecipeError(f"Cannot resume from {path}: its weights do not fit {type(net).__name__} (another "
                          "architecture or arch_params?); resume_allow_changes cannot bridge that.\n  "
                          + "\n  ".join(parts))
    net.load_state_dict(weights)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _run_description(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    from omegaconf import OmegaConf

    if checkpoint.get("run") is not None:
        return checkpoint["run"]
    if checkpoint.get("recipe"):
        return OmegaConf.to_container(OmegaConf.create(checkpoint["recipe"]))
    if checkpoint.get("training_params"):
        return {"training_hyperparams": OmegaConf.to_container(OmegaConf.create(checkpoint["training_params"]))}
    return None
