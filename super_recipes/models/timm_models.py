"""Any timm model by name: recipe ``architecture: timm/<name>`` (the optional extra ``super-recipes[timm]``).

``arch_params`` are timm's own ``create_model`` arguments (``drop_rate``, ``drop_path_rate``, ``in_chans``,
``global_pool``...); ``num_classes`` comes from the dataset as for every model. ``pretrained_weights`` takes a
timm pretrained tag of that model (``a1_in1k``, ``miil_in21k``; ``timm.list_pretrained("<name>.*")`` lists
them), ``imagenet`` (timm's default tag) or ``imagenet21k`` (its first ImageNet-21K tag). timm does the loading
(its hub download, its checkpoint filters for checkpoints in their original layout); the result is copied into
the model under our ``strict_load`` / ``load_backbone`` / fine-tuning rules, so a 21K-class checkpoint fine-tunes
a 10-class model with only the head left at its initialization, and the load is reported like any other.

Offline, a weights file in the weights cache folder (:func:`super_recipes.models.pretrained.weights_dir`) named
``<architecture>.<tag>.safetensors`` or ``.pth``, or with the file name of the tag's URL, is used instead of the
hub. timm is imported only when a ``timm/`` name is looked up; without it the lookup fails in one line naming
the extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError, did_you_mean

logger = logging.getLogger("super_recipes")

TIMM_EXTRA = "pip install 'super-recipes[timm]'"
TIMM_ATTRIBUTE = "_super_recipes_timm"  # (timm architecture, create_model keyword arguments) of a built model
DEFAULT_TAG_ALIASES = ("imagenet", "imagenet1k")
IMAGENET21K_ALIAS = "imagenet21k"


def require_timm(what: str) -> ModuleType:
    """The timm module, or a one-line RecipeError naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise RecipeError(f"{what} needs timm, an optional extra: {TIMM_EXTRA}") from None
    return timm


def timm_factory(name: str, where: str = "") -> Callable[..., nn.Module]:
    """The factory of the recipe name ``timm/<name>`` (resolved by the model registry's ``timm/`` namespace)."""
    timm = require_timm(f"Model 'timm/{name}'")
    if not timm.is_model(name):
        location = f" (in {where})" if where else ""
        raise RecipeError(f"Unknown timm model '{name}'{location}. {did_you_mean(name, timm.list_models())} "
                          f"timm.list_models() lists its {len(timm.list_models())} names.".replace("  ", " "))
    return build_timm_factory(name, default_num_classes=1000)


def build_timm_factory(architecture: str, default_num_classes: int) -> Callable[..., nn.Module]:
    """A model factory that calls ``timm.create_model(architecture, num_classes=..., **arch_params)``."""

    def factory(num_classes: int = default_num_classes, **timm_kwargs: Any) -> nn.Module:
        timm = require_timm(f"Model '{architecture}'")
        try:
            model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **timm_kwargs)
        except TypeError as err:
            if "unexpected keyword argument" not in str(err):
                raise
            raise RecipeError(f"timm model '{architecture}' does not take the arch_params you gave: {err}.") from None
        setattr(model, TIMM_ATTRIBUTE, (architecture, dict(timm_kwargs)))
        return model

    factory.__name__ = factory.__qualname__ = f"timm/{architecture}"
    factory.__doc__ = f"timm's {architecture} (recipe architecture: timm/{architecture}; arch_params go to timm)."
    return factory


def timm_pretrained_tags(architecture: str) -> list[str]:
    """The ``pretrained_weights`` values of a timm architecture: timm's tags plus our dataset aliases."""
    timm = require_timm(f"Pretrained weights of '{architecture}'")
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{architecture}.*")]
    aliases = [*DEFAULT_TAG_ALIASES] if tags else []
    if any(tag.endswith("in21k") for tag in tags):
        aliases.append(IMAGENET21K_ALIAS)
    return [*aliases, *tags]


def resolve_timm_tag(architecture: str, tag: str) -> str:
    """``imagenet`` -> timm's default tag, ``imagenet21k`` -> its first ImageNet-21K tag; a RecipeError with the
    valid values when ``tag`` is neither an alias nor one of timm's tags."""
    timm = require_timm(f"Pretrained weights of '{architecture}'")
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{architecture}.*")]
    lowered = tag.lower()
    if lowered in DEFAULT_TAG_ALIASES and tags:
        return timm.models.get_pretrained_cfg(architecture).tag
    if lowered == IMAGENET21K_ALIAS:
        in21k = [t for t in tags if t.endswith("in21k")]
        if in21k:
            return in21k[0]
    if tag in tags:
        return tag
    valid = timm_pretrained_tags(architecture)
    raise RecipeError(f"timm model '{architecture}' has no pretrained weights '{tag}'; valid values: "
                      f"{', '.join(valid) if valid else 'none (timm publishes no weights for it)'}.")


def cached_weights_file(architecture: str, tag: str, url: str | None) -> Path | None:
    """A weights file for ``architecture.tag`` already in the weights cache folder, if any (see the module doc)."""
    from super_recipes.models.pretrained import file_name_of, weights_dir

    folder = weights_dir()
    names = [f"{architecture}.{tag}.safetensors", f"{architecture}.{tag}.pth"]
    if url:
        names.append(file_name_of(url))
    return next((folder / name for name in names if (folder / name).is_file()), None)


def load_timm_pretrained(model: nn.Module, architecture: str, tag: str, strict_load: Any = "on",
                         load_backbone: bool = False) -> Any:
    """``pretrained_weights`` for a model built by timm: timm loads the published file into a reference model of
    the published class count, whose weights are then copied into ``model`` (see the module doc)."""
    from super_recipes.models.pretrained import weights_dir
    from super_recipes.models.weights import load_state_dict_into

    timm = require_timm(f"Pretrained weights of '{architecture}'")
    built_as, kwargs = getattr(model, TIMM_ATTRIBUTE, (architecture, {}))
    resolved = resolve_timm_tag(built_as, tag)
    full_name = f"{built_as}.{resolved}"
    config = timm.models.get_pretrained_cfg(full_name)
    local = cached_weights_file(built_as, resolved, config.url)
    overlay = {"file": str(local)} if local is not None else None
    published_classes = config.num_classes or getattr(model, "num_classes", 1000)
    try:
        reference = timm.create_model(full_name, pretrained=True, num_classes=published_classes,
                                      pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as err:  # hub errors, timeouts, a corrupt file: whichever, the user needs the same facts
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hub_file = config.hf_hub_filename or "model.safetensors"
        hub = f"https://huggingface.co/{config.hf_hub_id}/resolve/main/{hub_file}" if config.hf_hub_id else None
        fetch = " or ".join(f"{s} (saved under its own file name)" if s == config.url else s
                            for s in (hub, config.url) if s)
        raise RecipeError(
            f"Pretrained weights '{tag}' ({full_name}) for {architecture} could not be loaded ({reason}).\n"
            f"Put {built_as}.{resolved}.safetensors (or .pth) in the folder {weights_dir()}\n"
            f"fetching it from {fetch}."
        ) from None
    source = f"timm weights {full_name} ({local or 'timm hub cache'})"
    return load_state_dict_into(model, reference.state_dict(), strict_load, load_backbone, source=source)
