"""The top-level keys of a recipe and ``checkpoint_params``: types, ranges and paths, checked before building.

``architecture``, ``experiment_name``, ``ckpt_root_dir``, ``device``, ``num_gpus``, ``multi_gpu``, ``imports``,
the two loader names and the four groups. Other top-level keys are allowed (values to interpolate), unless one
looks like a misspelt known key.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from super_recipes.config.schema import Problem, check_schema, problems_message
from super_recipes.config.schema import key as k
from super_recipes.errors import RecipeError, closest_names, did_you_mean

MULTI_GPU_MODES = ("Off", "DDP", "AUTO")
DEVICE_WORDS = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps")


@dataclass
class TopLevel:
    """The top-level keys (README "Anatomy of a recipe")."""

    architecture: str = k(help="a registered model name")
    experiment_name: str | None = k(None, "outputs go to <ckpt_root_dir>/<experiment_name>/ (default: architecture)")
    ckpt_root_dir: str | None = k(None, "the folder of all experiments (default ./checkpoints)")
    train_dataloader: str | None = k(None, "a registered dataloader name")
    val_dataloader: str | None = k(None, "a registered dataloader name")
    device: str | None = k("auto", "auto | cpu | cuda | cuda:N")
    num_gpus: int = k(1, "processes (devices) to train on; -1: all", ge=-1)
    multi_gpu: Annotated[Literal["Off", "DDP", "AUTO"] | bool, "Off, DDP or AUTO"] = k("Off", "Off | DDP | AUTO")
    imports: list[str] | str = k([], "modules imported first (user code that registers datasets, models...)")
    training_hyperparams: dict[str, Any] = k({}, "the training_hyperparams group")
    dataset_params: dict[str, Any] = k({}, "the dataset_params group")
    arch_params: dict[str, Any] | None = k(None, "the architecture's keyword arguments")
    checkpoint_params: dict[str, Any] | None = k(None, "initial weights")


@dataclass
class CheckpointParams:
    """``checkpoint_params`` (README "Loading weights")."""

    checkpoint_path: str | None = k(None, "a .pth file")
    pretrained_weights: str | None = k(None, "published weights by name")
    strict_load: Literal["on", "off", "no_key_matching"] | bool = k("on", "how strictly names/shapes must match")
    load_backbone: bool = k(False, "load everything but the head")
    load_ema_as_net: bool = k(False, "load the checkpoint's EMA weights")
    load_weights_only: bool = k(True, "initial weights are always weights only")


DATASET_GROUP_KEYS = ("train_dataset_params", "train_dataloader_params", "val_dataset_params",
                      "val_dataloader_params")


def check_top_level(cfg: Mapping[str, Any], origin: Callable[[str], str] | None = None) -> None:
    """Refuse wrong types and ranges of the top-level keys, misspelt top-level keys, an unusable ``device``,
    a ``ckpt_root_dir`` that is a file, and a recipe without data."""
    from super_recipes.registry import to_plain

    cfg = to_plain(cfg)
    known = {name: cfg[name] for name in TopLevel.__dataclass_fields__ if name in cfg}
    _, problems = check_schema(TopLevel, known)
    for name in cfg:
        if name in TopLevel.__dataclass_fields__:
            continue
        close = closest_names(str(name), TopLevel.__dataclass_fields__, n=1)
        if close and difflib.SequenceMatcher(None, str(name).lower(), close[0].lower()).ratio() >= 0.8:
            problems.append(Problem(str(name), f"unknown key. Did you mean: {close[0]}?"))
    if cfg.get("checkpoint_params"):
        _, ckpt_problems = check_schema(CheckpointParams, cfg["checkpoint_params"], "checkpoint_params.")
        problems += ckpt_problems
    data = cfg.get("dataset_params") or {}
    if isinstance(data, Mapping):
        problems += [Problem(f"dataset_params.{name}", f"expected a mapping, got {data[name]!r}")
                     for name in DATASET_GROUP_KEYS if data.get(name) is not None and not isinstance(data[name],
                                                                                                    Mapping)]
    if known.get("num_gpus") == 0:
        problems.append(Problem("num_gpus", "expected -1 (every device) or an integer >= 1, got 0"))
    if problems:
        raise RecipeError(problems_message("", problems, origin))
    check_device(cfg.get("device"), origin("device") if origin else "")
    check_ckpt_root_dir(cfg.get("ckpt_root_dir"), origin("ckpt_root_dir") if origin else "")
    train_dataset = (data.get("train_dataset_params") or {}).get("dataset") if isinstance(data, Mapping) else None
    if not cfg.get("train_dataloader") and not train_dataset and not (data.get("train_dataset_params") or {}).get(
            "_target_"):
        raise RecipeError("The recipe has no 'train_dataloader' (a registered dataloader name) and no "
                          "dataset_params.train_dataset_params.dataset (a registered dataset name): set one.")


def normalize_multi_gpu(value: Any) -> str:
    """``multi_gpu``: YAML reads a bare ``Off`` as false; both mean ``Off``."""
    return "Off" if value is False or value is None else str(value)


def check_device(device: Any, where: str = "") -> None:
    """``device``: auto, cpu, cuda, cuda:N (or another torch device type) that exists on this machine."""
    if device is None or device == "auto":
        return
    import torch

    from super_recipes.engine.devices import resolve_device

    source = f" (from {where})" if where else ""
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        hint = did_you_mean(str(device), DEVICE_WORDS)
        raise RecipeError(f"device '{device}'{source} is not a device. {hint + ' ' if hint else ''}"
                          "Use one of: auto, cpu, cuda, cuda:N.") from None
    try:
        resolve_device(device)
    except RecipeError as err:
        raise RecipeError(f"{err}{source}") from None


def check_ckpt_root_dir(path: Any, where: str = "") -> None:
    """``ckpt_root_dir`` must be a folder (or creatable as one), never an existing file."""
    if path is None:
        return
    folder = Path(str(path)).expanduser()
    source = f" (from {where})" if where else ""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise RecipeError(f"ckpt_root_dir {folder}{source}: {candidate} is a file, not a folder; choose "
                                  "another ckpt_root_dir.")
            return
