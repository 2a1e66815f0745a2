"""Resuming (``resume``, ``resume_path``, ``resume_allow_changes``): which checkpoint, and is it the same run.

A resumed run must be the run that was interrupted. Keys that change what is computed (architecture, data,
batch size, schedule...) must match the checkpoint's recipe; bookkeeping keys (paths, logging, workers, a longer
``max_epochs``) may differ.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from super_recipes.engine.checkpoints import LATEST
from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")

# Keys that do not change the computation of a run, as dotted-path patterns.
BOOKKEEPING_KEYS = (
    "ckpt_root_dir", "experiment_name", "imports", "device",
    "checkpoint_params.*",
    "training_hyperparams.max_epochs", "training_hyperparams.resume", "training_hyperparams.resume_path",
    "training_hyperparams.resume_allow_changes", "training_hyperparams.silent_mode",
    "training_hyperparams.log_every_n_steps", "training_hyperparams.save_model",
    "training_hyperparams.ckpt_every_n_steps", "training_hyperparams.save_ckpt_epoch_list",
    "training_hyperparams.load_opt_params", "training_hyperparams.launch_tensorboard",
    "training_hyperparams.tensorboard_port", "training_hyperparams.log_installed_packages",
    "training_hyperparams.save_full_train_log",
    "dataset_params.*_dataloader_params.num_workers", "dataset_params.*_dataloader_params.pin_memory",
    "dataset_params.*_dataloader_params.persistent_workers", "dataset_params.*_dataloader_params.prefetch_factor",
)


def resume_checkpoint_path(params: Any, experiment_dir: Path) -> Path | None:
    """The checkpoint to continue from (``resume_path``, ``resume``), or None for a fresh run.

    ``resume: auto`` continues ``ckpt_latest.pth`` when the experiment has one and starts fresh otherwise, so
    the same command serves a first launch and every requeue of a preemptible job.
    """
    if params.resume_path:
        path = Path(params.resume_path).expanduser()
        if not path.is_file():
            raise RecipeError(f"training_hyperparams.resume_path: no checkpoint at {path}.")
        return path
    path = experiment_dir / LATEST
    if params.resume == "auto":
        if path.is_file():
            return path
        logger.info(f"resume=auto: no {LATEST} in {experiment_dir} yet, starting a fresh run.")
        return None
    if params.resume:
        if not path.is_file():
            raise RecipeError(f"resume=true but {path} does not exist: nothing to resume in {experiment_dir}. "
                              "Check experiment_name and ckpt_root_dir, start without resume, or use resume=auto "
                              "to resume only when there is something to resume.")
        return path
    return None


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipes, bookkeeping keys excepted."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>") and not _bookkeeping(k)]


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path, allow_changes: bool) -> list[str]:
    """Refuse to resume when the run-defining keys changed, unless ``resume_allow_changes`` is true."""
    differences = run_differences(saved, current)
    if differences and not allow_changes:
        old, new = _flatten(saved), _flatten(current)
        lines = [f"  {k}: {old.get(k, '<absent>')!r} in the checkpoint, {new.get(k, '<absent>')!r} now"
                 for k in differences[:15]]
        more = f"\n  ... and {len(differences) - 15} more" if len(differences) > 15 else ""
        raise RecipeError(
            f"Cannot resume from {path}: the recipe differs in keys that change the run:\n" + "\n".join(lines)
            + more + "\nRestore them, or pass training_hyperparams.resume_allow_changes=true to continue anyway.")
    return differences


def describe_run(recipe: Any, params: Any) -> dict[str, Any]:
    """What a checkpoint's run is compared with on resume: the recipe, or the training params alone (objects
    of the Python API by their qualified names)."""
    from omegaconf import OmegaConf

    from super_recipes.config.describe import run_form

    if recipe is not None:
        recipe = recipe if OmegaConf.is_config(recipe) else OmegaConf.create(recipe)
        return OmegaConf.to_container(recipe, resolve=True)
    return {"training_hyperparams": run_form(params.to_dict())}


def _bookkeeping(key: str) -> bool:
    return any(fnmatch(key, pattern) for pattern in BOOKKEEPING_KEYS)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}
