"""Named dataloaders and :func:`get`, which builds a ``torch.utils.data.DataLoader`` from recipe params.

The defaults of a named loader such as ``cifar10_train`` live in the shipped recipe group file
``recipes/dataset_params/cifar10_dataset_params.yaml`` (its ``train_dataset_params`` and
``train_dataloader_params``), so recipes and Python calls share one source of truth. What the caller passes is
deep-merged on top (caller wins; lists such as ``transforms`` are replaced, not merged).

``dataset_params`` may hold ``dataset: RegisteredDatasetName`` (or ``_target_: package.module.Class``) to pick
the dataset class; the remaining keys are its constructor arguments.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.paths import recipes_dir
from super_recipes.registry import (
    COLLATE_FUNCTIONS,
    DATALOADERS,
    DATASETS,
    build,
    call_with_kwargs,
    register_dataloader,
    split_spec,
    to_plain,
)


def get(
    name: str | None = None,
    dataset_params: Mapping | None = None,
    dataloader_params: Mapping | None = None,
    where: str = "",
) -> DataLoader:
    """Build the dataloader a recipe's ``train_dataloader`` / ``val_dataloader`` key names.

    ``name`` is a registered dataloader (``shapes_train``, ``cifar10_val``, ...; list them with
    ``python -m super_recipes.registry dataloaders``) whose defaults ``dataset_params`` / ``dataloader_params``
    override, or ``None`` to build only from the given params (then ``dataset_params`` must name the dataset).
    ``where`` is the recipe path of ``dataset_params`` for error messages, e.g.
    ``dataset_params.train_dataset_params`` (the dataloader params are then reported at
    ``dataset_params.train_dataloader_params``). Both mappings may be OmegaConf configs.
    """
    if name is None:
        return build_dataloader(dataset_params, dataloader_params, where or "dataset_params")
    factory = DATALOADERS.get(name)
    kwargs: dict[str, Any] = {"dataset_params": dataset_params, "dataloader_params": dataloader_params}
    if "where" in inspect.signature(factory).parameters:
        kwargs["where"] = where
    return factory(**kwargs)


def from_recipe_group(
    group: str,
    split: str,
    dataset_params: Mapping | None = None,
    dataloader_params: Mapping | None = None,
    where: str = "",
) -> DataLoader:
    """A loader whose defaults are ``<split>_dataset_params`` / ``<split>_dataloader_params`` of the shipped
    ``recipes/dataset_params/<group>.yaml``, overridden by the given params.

    When ``dataset_params`` switches to another dataset class (``dataset:`` or ``_target_``), only the defaults
    that class accepts are kept (e.g. ``transforms``), so a user dataset can borrow a named loader's settings.
    """
    where = where or f"dataset_params.{split}_dataset_params"
    defaults = load_dataset_params(group)
    dataset_defaults = defaults.get(f"{split}_dataset_params") or {}
    dataset_params = to_plain(dataset_params) or {}
    for value, at in ((dataset_params, where), (to_plain(dataloader_params) or {}, "dataloader params")):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{at} must be a mapping, got {value!r}.")
    if _switches_dataset(dataset_defaults, dataset_params):
        factory, _, _ = _dataset_factory(dataset_params, where)
        dataset_defaults = _accepted_by(factory, dataset_defaults)
    return build_dataloader(
        deep_merge(dataset_defaults, dataset_params),
        deep_merge(defaults.get(f"{split}_dataloader_params"), dataloader_params),
        where,
    )


def _switches_dataset(defaults: Mapping, params: Mapping) -> bool:
    if "_target_" in params:
        return params["_target_"] != defaults.get("_target_")
    return params.get("dataset") is not None and params["dataset"] != defaults.get("dataset")


def _accepted_by(factory: Callable, params: Mapping) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {k: v for k, v in params.items() if k not in ("dataset", "_target_")}
    return {k: v for k, v in params.items() if k in parameters}


def load_dataset_params(group: str) -> dict[str, Any]:
    """The content of ``recipes/dataset_params/<group>.yaml`` as plain containers (a fresh copy per call)."""
    return copy.deepcopy(_load_group_file(group))


@functools.cache
def _load_group_file(group: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = recipes_dir() / "dataset_params" / f"{group}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise RecipeError(f"Dataset params group '{group}' not found at {path}. {did_you_mean(group, shipped)}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build_dataloader(
    dataset_params: Mapping | None,
    dataloader_params: Mapping | None,
    dataset_where: str = "dataset_params",
    dataloader_where: str | None = None,
) -> DataLoader:
    """Instantiate the dataset named in ``dataset_params`` and wrap it in a DataLoader.

    The ``*_where`` strings locate the two mappings in the recipe for error messages; by default the dataloader
    params sit next to the dataset params (``x.train_dataset_params`` -> ``x.train_dataloader_params``).
    """
    if dataloader_where is None:
        stem = dataset_where.removesuffix("dataset_params")
        sibling = stem != dataset_where
        dataloader_where = f"{stem}dataloader_params" if sibling else f"the dataloader params of {dataset_where}"
    dataset = build_dataset(dataset_params, dataset_where)
    params = to_plain(dataloader_params) or {}
    if not isinstance(params, Mapping):
        raise RecipeError(f"{dataloader_where} must be a mapping, got {params!r}.")
    accepted = _dataloader_arguments()
    unknown = [key for key in params if key not in accepted]
    if unknown:
        hints = " ".join(did_you_mean(key, accepted) for key in unknown)
        raise RecipeError(
            f"Unknown dataloader param(s) {unknown} in {dataloader_where}. {hints}\n"
            f"Accepted: {', '.join(sorted(accepted))}"
        )
    params = dict(params)
    collate = params.get("collate_fn")
    if collate is not None and not callable(collate):
        params["collate_fn"] = build(COLLATE_FUNCTIONS, collate, f"{dataloader_where}.collate_fn")
    if not params.get("num_workers"):
        # These only apply to worker processes; dropping them lets `num_workers=0` alone switch workers off.
        params.pop("persistent_workers", None)
        params.pop("prefetch_factor", None)
    if params.get("pin_memory") and not torch.cuda.is_available():
        params["pin_memory"] = False  # avoids a per-loader warning on CPU-only machines
    try:
        return DataLoader(dataset, **params)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"Invalid dataloader params in {dataloader_where}: {err}") from None


def build_dataset(dataset_params: Mapping | None, where: str = "dataset_params") -> torch.utils.data.Dataset:
    """Instantiate ``dataset_params``: ``dataset: Name`` (or ``_target_``) picks the class; the rest are its
    constructor arguments."""
    params = to_plain(dataset_params) or {}
    if not isinstance(params, Mapping):
        raise RecipeError(f"{where} must be a mapping, got {params!r}.")
    factory, kwargs, what = _dataset_factory(params, where)
    try:
        return call_with_kwargs(factory, kwargs, what, where)
    except RecipeError as err:
        if where in str(err):
            raise
        # Raised while building (e.g. a bad transform name): say which params group it came from.
        raise RecipeError(f"In {where}: {err}") from None


def _dataset_factory(params: Mapping, where: str) -> tuple[Callable, dict[str, Any], str]:
    """(class, constructor kwargs, description) for dataset params holding ``dataset:`` or ``_target_``."""
    params = dict(params)
    if "_target_" in params:
        factory, kwargs = split_spec(params, DATASETS, where)
        kwargs.pop("dataset", None)  # a _target_ merged over defaults that name a dataset wins
        return factory, kwargs, f"dataset {params['_target_']}"
    if params.get("dataset") is not None:
        name = params.pop("dataset")
        return DATASETS.get(name, f"{where}.dataset"), params, f"dataset {name}"
    raise RecipeError(
        f"{where} does not say which dataset to build: add 'dataset: <name>' "
        f"(one of {', '.join(DATASETS.names())}) or '_target_: package.module.Class'."
    )


def deep_merge(base: Mapping | None, override: Mapping | None) -> dict[str, Any]:
    """``base`` updated recursively with ``override``; nested mappings merge, anything else is replaced."""
    merged = dict(to_plain(base) or {})
    for key, value in (to_plain(override) or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.lru_cache(maxsize=1)
def _dataloader_arguments() -> tuple[str, ...]:
    parameters = inspect.signature(DataLoader.__init__).parameters
    return tuple(name for name in parameters if name not in ("self", "dataset"))


def _group_loader(group: str, split: str) -> Callable[..., DataLoader]:
    def loader(
        dataset_params: Mapping | None = None, dataloader_params: Mapping | None = None, where: str = ""
    ) -> DataLoader:
        return from_recipe_group(f"{group}_dataset_params", split, dataset_params, dataloader_params, where)

    loader.__name__ = loader.__qualname__ = f"{group}_{split}"
    loader.__doc__ = f"{split} loader; defaults: recipes/dataset_params/{group}_dataset_params.yaml"
    return loader


# One registered loader per (shipped dataset_params group, split): `shapes_train`, `cifar10_val`, ...
shapes_train = register_dataloader("shapes_train")(_group_loader("shapes", "train"))
shapes_val = register_dataloader("shapes_val")(_group_loader("shapes", "val"))
cifar10_train = register_dataloader("cifar10_train")(_group_loader("cifar10", "train"))
cifar10_val = register_dataloader("cifar10_val")(_group_loader("cifar10", "val"))
cifar100_train = register_dataloader("cifar100_train")(_group_loader("cifar100", "train"))
cifar100_val = register_dataloader("cifar100_val")(_group_loader("cifar100", "val"))
imagenet_train = register_dataloader("imagenet_train")(_group_loader("imagenet", "train"))
imagenet_val = register_dataloader("imagenet_val")(_group_loader("imagenet", "val"))
