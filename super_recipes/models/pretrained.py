"""Published weights: ``models.get(name, pretrained_weights="imagenet")`` and ``checkpoint_params.pretrained_weights``.

For the torchvision families we register, the URL and file name come from torchvision's own weight enums
(``torchvision.models.get_model_weights(name)``): ``imagenet`` is the enum's ``DEFAULT`` (its best ImageNet-1k
weights for the unchanged architecture) and an enum member name (``IMAGENET1K_V1``) picks that entry. Other
models may add entries with :func:`register_pretrained_weights`; our CIFAR ResNets have none.

Files live in one cache folder: ``$SUPER_RECIPES_WEIGHTS_DIR`` when set, else torch hub's checkpoint folder
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``). The latter because it is where
torchvision itself stores the same files under the same names, so weights a machine already has are found and
nothing is stored twice. A missing file is downloaded there (atomically, hash-checked when the name carries a
hash); when that fails, the error says which file to put in which folder and where to fetch it.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.models.weights import LoadReport, load_weights

WEIGHTS_DIR_ENV = "SUPER_RECIPES_WEIGHTS_DIR"
DATASET_TAGS = ("imagenet", "imagenet1k")  # all mean the torchvision enum's DEFAULT entry
DOWNLOAD_TIMEOUT_S = 30.0
_REGISTERED: dict[tuple[str, str], str] = {}
# Modules that register other publishers' weights when imported (SuperGradients' COCO YOLOX files); imported before
# any lookup, so every tag is known whichever path asks first.
_PUBLISHER_MODULES = ("super_recipes.models.sg_checkpoints", "super_recipes.models.imagenet21k")


def _load_publishers() -> None:
    import importlib

    for module in _PUBLISHER_MODULES:
        importlib.import_module(module)
# torch hub names files ``<name>-<first hex digits of the sha256>.<ext>``.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.[A-Za-z0-9]+$")


def weights_dir() -> Path:
    """The weights cache folder (see the module doc)."""
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def register_pretrained_weights(architecture: str, tag: str, url: str) -> None:
    """Publish weights for a registered model: ``pretrained_weights=tag`` then fetches ``url``."""
    _REGISTERED[(architecture, tag.lower())] = url


def _timm_weights(architecture: str, tag: str = "") -> tuple[str, str] | None:
    """``(timm architecture, timm tag)`` when timm publishes ``architecture``'s weights: ``timm/<name>`` and the
    ImageNet-21K-P table's names (:mod:`super_recipes.models.imagenet21k`); None otherwise."""
    if architecture.startswith("timm/"):
        return architecture[len("timm/"):], tag
    from super_recipes.models.imagenet21k import IMAGENET21K_P, imagenet21k_tag

    if architecture in IMAGENET21K_P:
        return IMAGENET21K_P[architecture].timm_architecture, imagenet21k_tag(architecture, tag) if tag else ""
    return None


def pretrained_tags(architecture: str) -> list[str]:
    """The valid ``pretrained_weights`` values for ``architecture`` (empty when none are published)."""
    _load_publishers()
    timm_weights = _timm_weights(architecture)
    if timm_weights is not None:
        from super_recipes.models.timm_models import timm_pretrained_tags

        try:
            tags = timm_pretrained_tags(timm_weights[0])
        except RecipeError:  # no timm here: nothing can be loaded
            return []
        if not architecture.startswith("timm/"):
            tags = ["imagenet21k", "imagenet21k_ft_in1k", *(t for t in tags if t != "imagenet21k")]
        return tags
    tags = [tag for arch, tag in _REGISTERED if arch == architecture]
    enum = _torchvision_enum(architecture)
    if enum is not None:
        tags += [*DATASET_TAGS, *(member.name for member in enum)]
    return tags


def pretrained_url(architecture: str, tag: str) -> str:
    """The URL of the weights ``tag`` of ``architecture``; a RecipeError naming the valid tags otherwise."""
    _load_publishers()
    if (architecture, tag.lower()) in _REGISTERED:
        return _REGISTERED[(architecture, tag.lower())]
    enum = _torchvision_enum(architecture)
    if enum is not None:
        if tag.lower() in DATASET_TAGS:
            return enum.DEFAULT.url
        member = next((m for m in enum if m.name.lower() == tag.lower()), None)
        if member is not None:
            return member.url
    tags = pretrained_tags(architecture)
    if not tags:
        from super_recipes.models.classification import TORCHVISION_MODELS

        published = sorted({*TORCHVISION_MODELS, *(arch for arch, _ in _REGISTERED)})
        raise RecipeError(f"No published weights for '{architecture}'. pretrained_weights works for: "
                          f"{', '.join(published)}. Load your own file with checkpoint_path instead.")
    raise RecipeError(f"'{architecture}' has no pretrained weights '{tag}'; valid values: {', '.join(tags)}.")


def _torchvision_enum(architecture: str) -> Any:
    from super_recipes.models.classification import TORCHVISION_ALIASES, TORCHVISION_MODELS

    architecture = TORCHVISION_ALIASES.get(architecture, architecture)  # 1.x names: resnext50 -> resnext50_32x4d
    if architecture not in TORCHVISION_MODELS:
        return None
    import torchvision.models  # slow to import, hence only here

    return torchvision.models.get_model_weights(architecture)


def file_name_of(url: str) -> str:
    """The cache file name for ``url``: its last path segment (what torch hub and torchvision use)."""
    return Path(urlparse(url).path).name


def pretrained_weights_path(architecture: str, tag: str) -> Path:
    """The cached file of the weights ``tag`` of ``architecture``, downloaded first when absent."""
    url = pretrained_url(architecture, tag)
    folder = weights_dir()
    path = folder / file_name_of(url)
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _download(url, path)
    except Exception as err:  # URLError, socket timeouts, a hash mismatch (RuntimeError), a read-only folder...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(
            f"Pretrained weights '{tag}' for {architecture} are not in the weights cache and the download "
            f"failed ({reason}).\n"
            f"Put the file {path.name}\n"
            f"in the folder {folder}\n"
            f"fetching it from {url}\n"
            f"(the folder is ${WEIGHTS_DIR_ENV} when set, else torch hub's checkpoints folder)."
        ) from None
    return path


def _download(url: str, path: Path) -> None:
    import torch.hub

    match = _HASH_IN_NAME.search(path.name)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    # torch.hub opens the URL without a timeout, so an unreachable host would stall the run indefinitely;
    # the default socket timeout is the only handle it offers.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(partial), hash_prefix=match.group(1) if match else None)
        os.replace(partial, path)  # readers see no file or the whole, verified file
    finally:
        socket.setdefaulttimeout(previous)
        partial.unlink(missing_ok=True)


def load_pretrained_weights(model: nn.Module, architecture: str, tag: str, strict_load: Any = "on",
                            load_backbone: bool = False) -> LoadReport:
    """Load the published weights ``tag`` (``checkpoint_params.pretrained_weights``) into ``model``.

    ImageNet weights have a 1000-class head: with another ``num_classes`` everything but the head is loaded
    and the head is reported (the fine-tuning rule of :mod:`super_recipes.models.weights`).
    """
    if not architecture:
        raise RecipeError("pretrained_weights needs the architecture name (the recipe key `architecture`).")
    _load_publishers()
    timm_weights = _timm_weights(architecture, tag)
    if timm_weights is not None:
        from super_recipes.models.timm_models import load_timm_pretrained

        return load_timm_pretrained(model, timm_weights[0], timm_weights[1], strict_load, load_backbone)
    report = load_weights(model, pretrained_weights_path(architecture, tag), strict_load, load_backbone)
    if _torchvision_enum(architecture) is not None and hasattr(model, "transform_input"):
        # torchvision's GoogLeNet weights were ported from TensorFlow, trained on inputs scaled to [-1, 1];
        # torchvision's own builder turns the rescaling on whenever it loads them, and so do we.
        model.transform_input = True
    return report
