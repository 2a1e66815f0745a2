"""The recipe compiler: compose a recipe with Hydra, expand command-line shortcuts, and refuse mistakes early.

A recipe is ``recipes/<name>.yaml`` whose ``defaults:`` list pulls one file from each group
(``training_hyperparams``, ``dataset_params``, ``arch_params``, ``checkpoint_params``). Everything here runs
before any model or data is built, so a bad recipe fails in a second with a message naming the key, the file it
came from and the closest valid names.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from super_recipes.errors import RecipeError, closest_names, did_you_mean
from super_recipes.paths import recipes_dir

DEFAULT_RECIPE = "shapes_resnet"

# Command-line shortcuts users know from other frameworks -> the nested keys they stand for.
SHORTCUTS: dict[str, tuple[str, ...]] = {
    "epochs": ("training_hyperparams.max_epochs",),
    "max_epochs": ("training_hyperparams.max_epochs",),
    "lr": ("training_hyperparams.initial_lr",),
    "batch_size": ("dataset_params.train_dataloader_params.batch_size",),
    "val_batch_size": ("dataset_params.val_dataloader_params.batch_size",),
    "num_workers": ("dataset_params.train_dataloader_params.num_workers",
                    "dataset_params.val_dataloader_params.num_workers"),
    "resume": ("training_hyperparams.resume",),
}

TOP_LEVEL_KEYS = (
    "architecture", "experiment_name", "ckpt_root_dir", "train_dataloader", "val_dataloader", "num_gpus",
    "multi_gpu", "device", "imports", "training_hyperparams", "dataset_params", "arch_params",
    "checkpoint_params",
)
GROUPS = ("training_hyperparams", "dataset_params", "arch_params", "checkpoint_params")
MULTI_GPU_MODES = ("Off", "DDP", "AUTO")


# Top-level keys a user may set on any recipe, whether or not its file lists them (Hydra's `++key=value`).
TOP_LEVEL_SETTABLE = ("architecture", "experiment_name", "ckpt_root_dir", "train_dataloader", "val_dataloader",
                      "num_gpus", "multi_gpu", "device", "imports")


def expand_shortcuts(overrides: Sequence[str]) -> list[str]:
    """``epochs=5`` -> ``training_hyperparams.max_epochs=5`` (and the other :data:`SHORTCUTS`);
    ``device=cpu`` -> ``++device=cpu`` so standard top-level keys can be set on recipes that omit them."""
    expanded: list[str] = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in SHORTCUTS:
            expanded += [f"{target}={value}" for target in SHORTCUTS[key]]
        elif sep and key in TOP_LEVEL_SETTABLE:
            expanded.append(f"++{override}")
        else:
            expanded.append(override)
    return expanded


def available_recipes(config_dirs: Sequence[Path] = ()) -> list[str]:
    """Names of the top-level recipes in the shipped tree and in ``config_dirs``."""
    names = set()
    for folder in [*config_dirs, recipes_dir()]:
        names.update(p.stem for p in Path(folder).glob("*.yaml"))
    return sorted(names)


def check_recipe_exists(name: str, config_dirs: Sequence[Path] = ()) -> None:
    """Refuse an unknown ``--config-name`` with the closest recipe names."""
    stem = name.removesuffix(".yaml")
    if stem in available_recipes(config_dirs):
        return
    from super_recipes.errors import unknown_name_message

    searched = ", ".join(str(p) for p in [*config_dirs, recipes_dir()])
    raise RecipeError(unknown_name_message("recipe", stem, available_recipes(config_dirs)) +
                      f"\nSearched: {searched}")


@dataclass
class RecipeSource:
    """Where a composed recipe came from: used to say which file or override set a bad key."""

    name: str
    search_dirs: list[Path]
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def origin(self, dotted_key: str) -> str:
        """The command-line override or recipe file that set ``dotted_key`` (empty when unknown)."""
        for override in self.overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key == dotted_key:
                return f"command-line override '{override}'"
        group, _, rest = dotted_key.partition(".")
        primary = self._find(f"{self.name}.yaml")
        if primary and _has_key(primary, dotted_key):
            return str(primary)
        if group in self.choices and rest:
            for file in self._group_files(group, self.choices[group]):
                if _has_key(file, rest):
                    return str(file)
        return ""

    def _find(self, relative: str) -> Path | None:
        return next((d / relative for d in self.search_dirs if (d / relative).is_file()), None)

    def _group_files(self, group: str, choice: str, depth: int = 0) -> list[Path]:
        file = self._find(f"{group}/{choice}.yaml")
        if file is None or depth > 5:
            return []
        files = [file]
        for parent in _defaults_of(file):  # a group file may extend another in its own group
            files += self._group_files(group, parent, depth + 1)
        return files


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.load(path)


def _has_key(path: Path, dotted_key: str) -> bool:
    node: Any = _load_yaml(path)
    for part in dotted_key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _defaults_of(path: Path) -> list[str]:
    defaults = _load_yaml(path).get("defaults", []) or []
    return [d for d in defaults if isinstance(d, str) and d != "_self_"]


def compose_recipe(name: str = DEFAULT_RECIPE, overrides: Sequence[str] = (),
                   config_dir: str | Path | None = None) -> tuple[Any, RecipeSource]:
    """Compose ``name`` with Hydra's compose API (shortcuts allowed) -> (DictConfig, RecipeSource).

    This is what the command line does, for use from Python and tests.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    config_dirs = [Path(config_dir).resolve()] if config_dir else []
    check_recipe_exists(name, config_dirs)
    overrides = expand_shortcuts(overrides)
    GlobalHydra.instance().clear()
    primary = config_dirs[0] if config_dirs else recipes_dir()
    with initialize_config_dir(config_dir=str(primary), version_base=None):
        try:
            if config_dirs:
                # The user's folder is primary; the shipped groups stay reachable through the search path.
                overrides = [*overrides, f"hydra.searchpath=[file://{recipes_dir()}]"]
            cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
        except Exception as err:
            raise RecipeError(hydra_error_message(err, config_dirs)) from None
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    source = RecipeSource(name.removesuffix(".yaml"), [*config_dirs, recipes_dir()], choices, list(overrides))
    OmegaConf.set_struct(cfg, False)
    return cfg, source


def hydra_error_message(err: BaseException, search_dirs: Sequence[Path] = ()) -> str:
    """Hydra's message for a composition error, plus the closest group options when an option is unknown."""
    import re

    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("\t", "Config search"))]
    missing = re.search(r"Could not find '([\w/]+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        options = sorted({p.stem for d in [*search_dirs, recipes_dir()] for p in (Path(d) / group).glob("*.yaml")})
        from super_recipes.errors import unknown_name_message

        return f"{lines[0]}\n" + unknown_name_message(f"'{group}' option", option, options)
    return "\n".join(lines[:12])


def import_user_modules(cfg: Any, source: RecipeSource | None = None) -> None:
    """``imports: [package.module, ...]``: import user code that registers datasets, models, etc."""
    imports = cfg.get("imports") or []
    if isinstance(imports, str):
        imports = [imports]
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # user modules next to where the command runs, as `python -m` does
    for i, module in enumerate(imports):
        try:
            importlib.import_module(str(module))
        except ImportError as err:
            where = source.origin("imports") if source else ""
            raise RecipeError(
                f"imports[{i}]: cannot import '{module}'{f' (from {where})' if where else ''}: {err}\n"
                "Each entry must be an importable module path (package.module), importable from the current "
                "folder or an installed package."
            ) from None


def check_top_level(cfg: Any, source: RecipeSource | None = None) -> None:
    """Refuse likely typos of top-level keys and wrong top-level value types."""
    for key in cfg.keys():
        if key in TOP_LEVEL_KEYS:
            continue
        close = closest_names(str(key), TOP_LEVEL_KEYS, n=1)
        # Other top-level keys are allowed (values to interpolate); one that looks like a known key is a typo.
        if close and _similar(str(key), close[0]):
            where = source.origin(str(key)) if source else ""
            raise RecipeError(f"Unknown top-level key '{key}'{f' (from {where})' if where else ''}. "
                              f"Did you mean: {close[0]}?")
    if not cfg.get("architecture"):
        raise RecipeError("The recipe has no 'architecture'. Set it in the recipe or on the command line.")
    train_dataset = ((cfg.get("dataset_params") or {}).get("train_dataset_params") or {}).get("dataset")
    if not cfg.get("train_dataloader") and not train_dataset:
        raise RecipeError("The recipe has no 'train_dataloader' (a registered dataloader name) and no "
                          "dataset_params.train_dataset_params.dataset (a registered dataset name): set one.")
    multi_gpu = str(cfg.get("multi_gpu", "Off"))
    if multi_gpu not in MULTI_GPU_MODES:
        raise RecipeError(f"multi_gpu must be one of {', '.join(MULTI_GPU_MODES)}, got '{multi_gpu}'. "
                          f"{did_you_mean(multi_gpu, MULTI_GPU_MODES)}")
    num_gpus = cfg.get("num_gpus", 1)
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool):
        raise RecipeError(f"num_gpus must be an integer, got {num_gpus!r}.")


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.8
