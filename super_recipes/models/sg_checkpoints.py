"""Checkpoints written by SuperGradients (SG), loaded into our equivalent architectures.

``models.get(name, checkpoint_path=...)`` and ``checkpoint_params.checkpoint_path`` call :func:`load_sg_checkpoint`
when :func:`is_sg_checkpoint` recognises the file. What SG 3.7 writes: ``net`` (its model's state dict, no
``module.`` prefix), ``acc``, ``epoch``, ``metrics``, ``packages``, ``_best_ckpt_metrics``,
``optimizer_state_dict``, ``scaler_state_dict`` and, when present, ``ema_net``, ``processing_params``,
``torch_scheduler_state_dict``. Like SG, ``ema_net`` is taken in preference to ``net``.

SG's module names differ from ours; each family we share has a translation learned from SG's public sources
(github.com/Deci-AI/super-gradients, ``src/super_gradients/training/models``):

* ``resnet18/34/50/101/152``, ``resnet50_3343``, ``custom_resnet*`` (torchvision's ResNet here; SG
  ``classification_models/resnet.py`` ``ResNet``): same layout, SG says ``linear`` for torchvision's ``fc`` and
  ``shortcut`` for ``downsample``. SG's optional ``bn0`` (``input_batchnorm``) has no counterpart.
* ``resnet18_cifar`` and the other :class:`~super_recipes.models.classification.CifarResNet` s (SG ``CifarResNet``):
  SG ``conv1``/``bn1``/``layer{k}``/``linear`` are our ``stem.0``/``stem.1``/``stages.{k-1}``/``fc``; blocks
  and their ``shortcut`` have the same names.
* ``mobilenet_v2`` / ``custom_mobilenet_v2`` / ``mobile_net_v2_135`` (torchvision's MobileNetV2 here; SG
  ``classification_models/mobilenetv2.py``): stem, last conv and classifier have the same names; inside a block
  SG's flat ``conv`` Sequential (conv, bn, relu6, ...) becomes torchvision's nested ``Conv2dNormActivation`` s.
* ``yolox_n/t/s/m/l`` (and ``yolox_x``; SG ``detection_models/yolo_base.py``, ``csp_darknet53.py``):
  ``_backbone._modules_list.{i}`` / ``_head._modules_list.{i}`` become our ``backbone.dark*`` / ``neck.*`` /
  ``head.*`` (same order, same shapes). SG's stem is a 6x6 stride-2 convolution with padding 2, ours the
  equivalent Focus (space-to-depth then 3x3): its kernel is rearranged exactly, not by position. Our YOLOX
  BatchNorms already use SG's eps 1e-3 (and momentum 0.03), so the outputs agree without any change.

* ``regnetY200/400/600/800`` (``variant: super_gradients``), ``custom_regnet``, ``nas_regnet``: the renaming
  :func:`super_recipes.models.regnet.regnet_state_dict_from_super_gradients` applies (SG ``net.stage_{i}`` ->
  torchvision ``trunk_output.block{i+1}``).
* ``repvgg_*``: our RepVGG already uses SG's module names (``stem``, ``stage1-4``, ``branch_3x3``, ``linear``).

Task packages add their own families: a model class with a method ``super_gradients_key(sg_name)`` returning our
name (or None) is translated by it, and one with ``super_gradients_convert(weights)`` also rewrites the values a
renaming cannot carry over (DDRNet's stem biases, PP-LiteSeg's attention). Anything else gets no renaming: the
names must then already match (the report says which family was used).
``pretrained_weights: coco`` for ``yolox_*`` is registered here with SG's published URLs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.models.pretrained import register_pretrained_weights
from super_recipes.models.weights import LoadReport, load_state_dict_into

logger = logging.getLogger("super_recipes")

__all__ = ["SG_COCO_URLS", "SgLoadReport", "is_sg_checkpoint", "load_sg_checkpoint", "register_published_weights",
           "translate_sg_state_dict"]

# Keys only SG writes: ours always carry ``recipe`` and never these.
SG_MARKER_KEYS = ("packages", "_best_ckpt_metrics")
SG_REPORT_ATTRIBUTE = "_super_recipes_sg_report"
# Buffers SG itself drops when loading files older than 3.2 (yolo_base.py, YoloBase.load_state_dict).
SG_LEGACY_KEYS = frozenset({"stride", "_head.anchors._stride", "_head.anchors._anchors", "_head.anchors._anchor_grid",
                            "_head._modules_list.14.stride"})
# Tensors SG stores that ours recomputes from the weights or the arch_params (QARepVGG's fused-form placeholders,
# SSDHead's default boxes): dropped, and reported, when a family's rule has no place for them.
SG_RECOMPUTED = re.compile(r"(.*\.rbr_reparam\.(weight|bias)|(.*\.)?heads\.(dboxes_xy|dboxes_wh|scales|img_size))")
# SG's published COCO YOLOX weights (src/super_gradients/training/pretrained_models.py, MODEL_URLS); SG
# publishes no yolox_x.
SG_COCO_URLS = {name: f"https://sg-hub-nv.s3.amazonaws.com/models/{name}_coco.pth"
                for name in ("yolox_n", "yolox_t", "yolox_s", "yolox_m", "yolox_l")}


def register_published_weights() -> None:
    """``pretrained_weights: coco`` for ``yolox_*`` -> SG's published files (idempotent; run at import)."""
    for name, url in SG_COCO_URLS.items():
        register_pretrained_weights(name, "coco", url)


register_published_weights()


@dataclass
class SgLoadReport:
    """What a SuperGradients checkpoint load did: the translation, then the load itself (``load``)."""

    source: str
    weights_key: str  # "ema_net" or "net"
    family: str  # which translation rules were used
    sg_tensors: int
    renamed: dict[str, str] = field(default_factory=dict)  # SG name -> ours, where they differ
    converted: dict[str, str] = field(default_factory=dict)  # SG name -> ours, values rearranged (YOLOX stem)
    dropped: list[str] = field(default_factory=list)  # legacy SG buffers that SG drops too
    untranslated: list[str] = field(default_factory=list)  # SG names without a rule in this family
    load: LoadReport | None = None

    def summary(self) -> str:
        kept = self.sg_tensors - len(self.renamed) - len(self.converted) - len(self.dropped)
        lines = [f"SuperGradients checkpoint {self.source}: took '{self.weights_key}' ({self.sg_tensors} tensors), "
                 f"{self.family} names: {len(self.renamed)} renamed, {len(self.converted)} converted, {kept} "
                 f"already named alike, {len(self.dropped)} legacy buffers dropped"]
        if self.converted:
            lines.append("  converted: " + ", ".join(f"{k} -> {v}" for k, v in self.converted.items()))
        if self.untranslated:
            lines.append(f"  {len(self.untranslated)} without a rule for this family (first: "
                         f"{', '.join(self.untranslated[:4])})")
        if self.load is not None:
            lines.append("  " + self.load.summary())
        return "\n".join(lines)


def is_sg_checkpoint(checkpoint: Any) -> bool:
    """True for a file written by SuperGradients: its marker keys (or its YOLOX layout) and no ``recipe`` key."""
    if not isinstance(checkpoint, Mapping) or "recipe" in checkpoint:
        return False
    if any(key in checkpoint for key in SG_MARKER_KEYS):
        return True
    # SG's published weight files hold only ``net``/``ema_net``; its YOLOX names are unmistakable.
    weights = checkpoint.get("ema_net", checkpoint.get("net"))
    return isinstance(weights, Mapping) and any(str(k).startswith("_backbone._modules_list.") for k in weights)


def load_sg_checkpoint(model: nn.Module, checkpoint: Mapping[str, Any], source: str, strict_load: Any = "on",
                       load_backbone: bool = False, load_ema_as_net: bool = False) -> LoadReport:
    """Translate SG's ``ema_net`` (else ``net``) to our names and load it (the rules of ``models.weights``)."""
    from super_recipes.callbacks.averaging import unwrap_model

    key = "ema_net" if isinstance(checkpoint.get("ema_net"), Mapping) else "net"
    if load_ema_as_net and key != "ema_net":
        raise RecipeError(f"load_ema_as_net is set but the SuperGradients checkpoint {source} has no 'ema_net'.")
    if not isinstance(checkpoint.get(key), Mapping):
        raise RecipeError(f"{source} looks like a SuperGradients checkpoint but has no 'net' or 'ema_net' state dict "
                          f"(it holds: {', '.join(map(str, list(checkpoint)[:10]))}).")
    weights = {str(k): v for k, v in checkpoint[key].items() if isinstance(v, torch.Tensor)}
    target = unwrap_model(model)
    translated, report = translate_sg_state_dict(target, weights)
    report.source, report.weights_key = source, key
    try:
        report.load = load_state_dict_into(model, translated, strict_load, load_backbone,
                                           f"{source} (SuperGradients '{key}', {report.family} names)")
    except RecipeError as err:
        raise RecipeError(f"The SuperGradients checkpoint {source} does not fit {type(target).__name__} after "
                          f"translating its names with the {report.family} rules (another architecture or "
                          f"size?).\n{err}") from None
    setattr(model, SG_REPORT_ATTRIBUTE, report)
    logger.info(report.summary())
    return report.load


def translate_sg_state_dict(model: nn.Module, weights: Mapping[str, torch.Tensor]
                            ) -> tuple[dict[str, torch.Tensor], SgLoadReport]:
    """SG's state dict -> ours for ``model``'s family; names without a rule are kept (the load reports them)."""
    family, rename = _family(model)
    report = SgLoadReport("", "", family, len(weights))
    out: dict[str, torch.Tensor] = {}
    for sg_name, tensor in weights.items():
        name = sg_name[len("module."):] if sg_name.startswith("module.") else sg_name  # SG < 3 under DDP
        if name in SG_LEGACY_KEYS:
            report.dropped.append(sg_name)
            continue
        ours = rename(name)
        if ours is None and SG_RECOMPUTED.fullmatch(name):
            report.dropped.append(sg_name)
            continue
        if ours is None:
            report.untranslated.append(sg_name)
            ours = name
        if ours == _YOLOX_STEM and tensor.dim() == 4 and tensor.shape[-1] == 6:
            tensor = focus_kernel_from_6x6(tensor)
            report.converted[sg_name] = ours
        elif ours != sg_name:
            report.renamed[sg_name] = ours
        out[ours] = tensor
    # Values a renaming cannot carry over (a bias folded into a BatchNorm, an attention written the other way
    # round): the family's ``super_gradients_convert(weights)`` rewrites them in ``out`` (our names) and returns
    # {the key SG's tensor had in ``out``: our key it now fills}.
    convert = getattr(model, "super_gradients_convert", None)
    if callable(convert):
        sg_name_of = {ours: sg for sg, ours in report.renamed.items()}
        for read, written in convert(out).items():
            sg_name = sg_name_of.get(read, read)
            report.renamed.pop(sg_name, None)
            report.converted[sg_name] = written
    return out, report


def _family(model: nn.Module) -> tuple[str, Callable[[str], str | None]]:
    from torchvision.models import MobileNetV2, ResNet

    from super_recipes.detection.yolox.model import YoloX
    from super_recipes.models.classification import CifarResNet

    if isinstance(model, ResNet):
        return "ResNet", _resnet_name
    if isinstance(model, CifarResNet):
        return "CIFAR ResNet", _cifar_resnet_name
    if isinstance(model, MobileNetV2):
        return "MobileNetV2", _mobilenet_v2_renamer(model)
    if isinstance(model, YoloX):
        return "YOLOX", _yolox_name
    from super_recipes.models.regnet import RegNetY, _sg_regnet_key
    from super_recipes.models.repvgg import RepVGG

    if isinstance(model, RegNetY):
        return "RegNetY", _sg_regnet_key  # the rules regnet.py already keeps (regnet_state_dict_from_super_gradients)
    if isinstance(model, RepVGG):
        return "RepVGG (SuperGradients' own names)", lambda name: name
    # Task packages plug their families in without an edit here: a model class with a method
    # ``super_gradients_key(sg_name) -> our name | None`` (None: SG has a tensor we have no place for).
    own_rule = getattr(model, "super_gradients_key", None)
    if callable(own_rule):
        return type(model).__name__, own_rule
    return f"{type(model).__name__} (no SuperGradients rule: names as written)", lambda name: name


def _resnet_name(name: str) -> str | None:
    # SG classification_models/resnet.py ResNet: conv1, bn1, [bn0], layer1-4 with BasicResNetBlock/Bottleneck
    # (conv1..3, bn1..3, shortcut.0 conv / shortcut.1 BN), linear.
    if name.startswith("bn0."):
        return None  # SG's input_batchnorm: torchvision's ResNet has nothing in its place
    name = re.sub(r"^linear\.", "fc.", name)
    return re.sub(r"^(layer\d+\.\d+)\.shortcut\.", r"\1.downsample.", name)


def _cifar_resnet_name(name: str) -> str | None:
    # SG CifarResNet: conv1, bn1, layer1-4 (the same blocks and shortcut names as ours), linear.
    for pattern, replacement in ((r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^linear\.", "fc.")):
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    match = re.match(r"^layer(\d+)\.(.*)$", name)
    return f"stages.{int(match.group(1)) - 1}.{match.group(2)}" if match else None


# SG InvertedResidual.conv is one flat Sequential; torchvision nests Conv2dNormActivation(conv, bn, act).
# Expansion 1 (no 1x1 expand): dw conv, bn, relu6, pw conv, bn. Otherwise: pw, bn, relu6, dw, bn, relu6, pw, bn.
_MBV2_EXPAND_1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def _mobilenet_v2_renamer(model: nn.Module) -> Callable[[str], str | None]:
    from torchvision.models.mobilenetv2 import InvertedResidual

    # Which table a block uses follows from our own block (3 layers: expansion 1; 4 layers: expanded).
    tables = {str(i): _MBV2_EXPAND_1 if len(block.conv) == 3 else _MBV2_EXPAND
              for i, block in enumerate(model.features) if isinstance(block, InvertedResidual)}

    def rename(name: str) -> str | None:
        match = re.match(r"^features\.(\d+)\.conv\.(\d+)\.(.*)$", name)
        if match is None:
            return name  # features.0.{0,1}, features.18.{0,1}, classifier.1: named alike
        block, layer, rest = match.groups()
        ours = tables.get(block, {}).get(layer)
        return None if ours is None else f"features.{block}.conv.{ours}.{rest}"

    return rename


_YOLOX_STEM = "backbone.stem.conv.conv.weight"
# SG YoloDarknetBackbone._modules_list (csp_darknet53.py CSPDarknet53): 0 stem Conv 6x6, then per stage a strided
# conv and a CSPLayer; 8 is SPP, 9 the last CSPLayer.
_YOLOX_BACKBONE = {"0": "stem.conv", "1": "dark2.0", "2": "dark2.1", "3": "dark3.0", "4": "dark3.1", "5": "dark4.0",
                   "6": "dark4.1", "7": "dark5.0", "8": "dark5.1", "9": "dark5.2"}
# SG YoloHead._modules_list (yolo_base.py): upsample/concat entries (1, 2, 5, 6, 9, 12) hold no tensors; 14 DetectX.
_YOLOX_NECK = {"0": "lateral_conv5", "3": "top_down_p4", "4": "lateral_conv4", "7": "top_down_p3",
               "8": "downsample_p3", "10": "bottom_up_p4", "11": "downsample_p4", "13": "bottom_up_p5"}
# Inside modules: CSPLayer.bottlenecks -> blocks, Bottleneck.cv1/cv2 -> conv1/conv2, SPP.cv1/cv2 -> conv1/conv2,
# GroupedConvBlock.dconv/conv -> DepthwiseSeparableConv.depthwise/pointwise. Conv.conv/bn are named alike.
_YOLOX_PARTS = ((r"\.bottlenecks\.", ".blocks."), (r"\.cv1\.", ".conv1."), (r"\.cv2\.", ".conv2."),
                (r"\.dconv\.conv\.", ".depthwise.conv."), (r"\.dconv\.bn\.", ".depthwise.bn."),
                (r"\.conv\.(conv|bn)\.", r".pointwise.\1."))


def _yolox_name(name: str) -> str | None:
    match = re.match(r"^_(backbone|head)\._modules_list\.(\d+)\.(.*)$", name)
    if match is None:
        return None
    part, index, rest = match.groups()
    if part == "head" and index == "14":
        prefix = "head"
    else:
        table, root = (_YOLOX_BACKBONE, "backbone") if part == "backbone" else (_YOLOX_NECK, "neck")
        if index not in table:
            return None
        prefix = f"{root}.{table[index]}"
    rest = "." + rest
    for pattern, replacement in _YOLOX_PARTS:
        rest = re.sub(pattern, replacement, rest)
    return prefix + rest


def focus_kernel_from_6x6(weight: torch.Tensor) -> torch.Tensor:
    """SG's 6x6 stride-2 padding-2 stem kernel ``[O, C, 6, 6]`` -> our Focus 3x3 kernel ``[O, 4C, 3, 3]``.

    Output pixel ``(i, j)`` of the 6x6 conv reads input ``(2i + u - 2, 2j + v - 2)``; Focus reads slice
    ``(dy, dx)`` of the space-to-depth input at ``(i + a - 1, j + b - 1)``, i.e. input ``(2i + 2a + dy - 2, ...)``.
    So ``u = 2a + dy``, ``v = 2b + dx``; Focus orders its slices (0,0), (1,0), (0,1), (1,1) as (dy, dx), i.e.
    slice index ``2 dx + dy``, each holding all C channels.
    """
    out_channels, in_channels = weight.shape[:2]
    # [O, C, a, dy, b, dx] -> [O, dx, dy, C, a, b]
    split = weight.reshape(out_channels, in_channels, 3, 2, 3, 2).permute(0, 5, 3, 1, 2, 4)
    return split.reshape(out_channels, 4 * in_channels, 3, 3).contiguous()
