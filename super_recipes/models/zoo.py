"""The classification zoo in one table: ``python -m super_recipes.models [NAME ...] [--csv FILE]``.

For every registered classification architecture (recipe key ``architecture``): its parameters and GFLOPs at its
default resolution (counted on the ``meta`` device, so nothing is allocated or computed; GFLOPs are
multiply-adds, the unit papers and torchvision's model tables use), the ``pretrained_weights`` values that resolve
for it, and the published ImageNet top-1 of each.

Weights and accuracies of the torchvision families come from torchvision's own weight enums (the tag, ``V1`` or
``V2``, matters: torchvision's V2 recipes score higher than the 1.x guide's figures, which were measured with
other recipes). Architectures of our own carry their published figure in :data:`PUBLISHED`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PUBLISHED", "ZooRow", "zoo_rows"]

# name -> (default resolution, published top-1 %, where it was published) for architectures torchvision has no
# weight enum for. Resolutions are the published evaluation sizes.
PUBLISHED: dict[str, tuple[int, float | None, str]] = {
    "resnet_tiny_cifar": (32, None, "no published figure (our smallest CIFAR ResNet)"),
    "resnet18_cifar": (32, 94.9, "CIFAR-10, recipe cifar10_resnet (SuperGradients 1.x table)"),
    "resnet34_cifar": (32, None, "no published figure"),
    "resnet50_cifar": (32, None, "no published figure"),
    # RepVGG paper (Ding et al. 2021), as reproduced by the authors' and mmpretrain's released weights; A and B0-B2
    # after 120 epochs, B3 after 200 epochs with extra augmentation, D2se evaluated at 320 px.
    "repvgg_a0": (224, 72.41, "RepVGG paper"), "repvgg_a1": (224, 74.46, "RepVGG paper"),
    "repvgg_a2": (224, 76.48, "RepVGG paper"), "repvgg_b0": (224, 75.14, "RepVGG paper"),
    "repvgg_b1": (224, 78.37, "RepVGG paper"), "repvgg_b2": (224, 78.78, "RepVGG paper"),
    "repvgg_b3": (224, 80.52, "RepVGG paper, 200 epochs"), "repvgg_d2se": (320, 83.55, "RepVGG paper, 320 px"),
    # RegNet paper (Radosavovic et al. 2020), 100 epochs; SG's imagenet_regnetY recipe reports 70.88/74.74/76.18/77.07.
    "regnetY200": (224, 70.3, "RegNet paper"), "regnetY400": (224, 74.1, "RegNet paper"),
    "regnetY600": (224, 75.5, "RegNet paper"), "regnetY800": (224, 76.3, "RegNet paper"),
}
_CIFAR_OR_TINY = 32


@dataclass
class ZooRow:
    """One line of the zoo table."""

    name: str
    params_m: float
    gflops: float
    resolution: int
    weights: list[str] = field(default_factory=list)  # pretrained_weights values, each with its top-1
    published: str = ""

    def cells(self) -> list[str]:
        return [self.name, f"{self.params_m:.2f}", f"{self.gflops:.2f}", str(self.resolution),
                "; ".join(self.weights) or "-", self.published or "-"]


def _torchvision_weights(name: str) -> list[Any]:
    from super_recipes.models.classification import TORCHVISION_ALIASES

    name = TORCHVISION_ALIASES.get(name, name)  # 1.x names (resnext50) share torchvision's weights
    try:
        import torchvision.models

        return list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError, AttributeError):
        return []


def _resolution(name: str, weights: Sequence[Any]) -> int:
    if name in PUBLISHED:
        return PUBLISHED[name][0]
    for entry in weights:
        crop = getattr(entry.transforms(), "crop_size", None)
        if crop:
            return int(crop[0])
    return 224


def _weight_tag(entry: Any, resolution: int) -> str:
    """``IMAGENET1K_V2 80.86%`` (with ``@384`` when those weights are evaluated at another resolution)."""
    crop = getattr(entry.transforms(), "crop_size", None)
    at = f" @{crop[0]}" if crop and int(crop[0]) != resolution else ""
    return f"{entry.name} {entry.meta['_metrics']['ImageNet-1K']['acc@1']:.2f}%{at}"


def _count(name: str, resolution: int) -> tuple[float, float]:
    """Parameters (millions) and multiply-adds (billions) of ``name`` at ``resolution``, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from super_recipes import models

    num_classes = 1000 if resolution != _CIFAR_OR_TINY else 10
    try:
        with torch.device("meta"):
            model = models.get(name, num_classes=num_classes).eval()
    except NotImplementedError:
        # Builders that compute their layout with tensors (torchvision's RegNets) cannot run on meta: build on
        # the CPU, then move there.
        model = models.get(name, num_classes=num_classes).eval().to("meta")
    inputs = torch.empty(1, 3, resolution, resolution, device="meta")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    return params, counter.get_total_flops() / 2e9


def _needs_arguments(factory: Any) -> bool:
    """Whether an architecture cannot be built from its name alone (``custom_*`` ones take their structure)."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name != "num_classes" for p in parameters)


def classification_names(include_custom: bool = False) -> list[str]:
    """Registered architectures that are not detection or segmentation models (those have their own tables);
    those that need ``arch_params`` to be built (``repvgg_custom``...) only with ``include_custom``."""
    import importlib.util

    from super_recipes.registry import MODELS

    without_timm = importlib.util.find_spec("timm") is None
    names = []
    for name in MODELS.names(include_fallback=False):
        factory = MODELS.get(name)
        module = getattr(factory, "__module__", "")
        if module.startswith(("super_recipes.detection", "super_recipes.segmentation")):
            continue
        if without_timm and module == "super_recipes.models.timm_models":
            continue  # the ImageNet-21K-P backbones are built by timm: listed once the extra is installed
        if include_custom or not _needs_arguments(factory):
            names.append(name)
    return names


def zoo_rows(names: Iterable[str] | None = None, needs_arch_params: list[str] | None = None) -> list[ZooRow]:
    """The zoo table's rows for ``names`` (default: every classification architecture). Listing them all, a
    factory that refuses to build from its name alone (``custom_resnet`` wants ``layers``) is appended to
    ``needs_arch_params`` instead of failing the table."""
    from super_recipes.errors import RecipeError
    from super_recipes.models.imagenet21k import IMAGENET21K_P
    from super_recipes.models.pretrained import DATASET_TAGS, pretrained_tags

    rows = []
    for name in names if names is not None else classification_names():
        weights = _torchvision_weights(name)
        resolution = _resolution(name, weights)
        try:
            params, gflops = _count(name, resolution)
        except RecipeError:
            if names is not None or needs_arch_params is None:
                raise
            needs_arch_params.append(name)
            continue
        tags = [_weight_tag(entry, resolution) for entry in weights if "ImageNet-1K" in entry.meta.get("_metrics", {})]
        if tags:
            tags.insert(0, "imagenet (= DEFAULT)")
        enum_names = {entry.name for entry in weights}
        tags += [tag for tag in pretrained_tags(name) if tag not in enum_names and tag not in DATASET_TAGS]
        published = ""
        if name in IMAGENET21K_P:
            row = IMAGENET21K_P[name]
            published = (f"{row.top1_21k_p}% ImageNet-21K-P semantic, {row.top1_in1k}% ImageNet-1k fine-tuned "
                         f"(MIIL table; timm {row.timm_architecture})")
        elif name in PUBLISHED:
            _, top1, source = PUBLISHED[name]
            published = f"{top1}% ({source})" if top1 is not None else source
        elif weights:
            default = type(weights[0]).DEFAULT  # what pretrained_weights: imagenet loads
            published = f"{default.meta['_metrics']['ImageNet-1K']['acc@1']:.2f}% (torchvision {default.name})"
        rows.append(ZooRow(name, params, gflops, resolution, tags, published))
    return rows


HEADER = ["architecture", "params (M)", "GFLOPs", "resolution", "pretrained_weights (top-1)", "published top-1"]


def format_table(rows: Sequence[ZooRow]) -> str:
    """A Markdown table of ``rows``."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m super_recipes.models [NAME ...] [--csv FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m super_recipes.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="architectures to list (default: every classification one)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    from super_recipes.errors import RecipeError

    try:
        needs_arch_params: list[str] = []
        rows = zoo_rows(args.names or None, needs_arch_params)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if not args.names:
        custom = sorted({*classification_names(include_custom=True), *needs_arch_params}
                        - (set(classification_names()) - set(needs_arch_params)))
        if custom:
            print(f"\nBuilt from their arch_params (no fixed size): {', '.join(custom)}")
        import importlib.util

        if importlib.util.find_spec("timm") is None:
            from super_recipes.models.imagenet21k import IMAGENET21K_P
            from super_recipes.models.timm_models import TIMM_EXTRA

            print(f"\nWith the timm extra ({TIMM_EXTRA}): the ImageNet-21K-P backbones "
                  f"{', '.join(IMAGENET21K_P)} and every timm model as timm/<name>.")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            writer.writerows(row.cells() for row in rows)
    return 0
