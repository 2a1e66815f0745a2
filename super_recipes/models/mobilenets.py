"""MobileNets by SuperGradients' names: ``mobile_net_v2_135``, ``custom_mobilenet_v2``, ``mobilenet_v3_custom``.

The plain ``mobilenet_v2`` / ``mobilenet_v3_large`` / ``mobilenet_v3_small`` are torchvision's factories
(:mod:`super_recipes.models.classification`; their ``width_mult`` is the paper's multiplier, applied to every
layer with round-to-nearest-8). The names here are built on torchvision's :class:`MobileNetV2` /
:class:`MobileNetV3` classes but follow SuperGradients' width rule, because its ImageNet figures and
checkpoints are for that layout: for MobileNetV2 the stem (32) and the expansion-1 stage (16) are not scaled,
other stages are rounded *up* to a multiple of 8, and the 1280-wide last layer only grows (width > 1).
At width 1.0 both rules give torchvision's ``mobilenet_v2`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model

__all__ = ["MOBILENET_V2_STRUCTURE", "MOBILENET_V3_STRUCTURES", "build_mobilenet_v2", "build_mobilenet_v3",
           "mobilenet_v2_state_dict_from_super_gradients"]

# MobileNetV2 paper (Sandler et al. 2018) Table 2: expansion t, output channels c, repeats n, stride s.
MOBILENET_V2_STRUCTURE: list[list[float]] = [
    [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
]

# MobileNetV3 paper (Howard et al. 2019) Tables 1-2 in SuperGradients' row form: kernel k, expansion t (of the
# block's input width), output channels c, squeeze-excite, hard-swish, stride s.
MOBILENET_V3_STRUCTURES: dict[str, list[list[float]]] = {
    "large": [
        [3, 1, 16, 0, 0, 1], [3, 4, 24, 0, 0, 2], [3, 3, 24, 0, 0, 1], [5, 3, 40, 1, 0, 2], [5, 3, 40, 1, 0, 1],
        [5, 3, 40, 1, 0, 1], [3, 6, 80, 0, 1, 2], [3, 2.5, 80, 0, 1, 1], [3, 2.3, 80, 0, 1, 1],
        [3, 2.3, 80, 0, 1, 1], [3, 6, 112, 1, 1, 1], [3, 6, 112, 1, 1, 1], [5, 6, 160, 1, 1, 2],
        [5, 6, 160, 1, 1, 1], [5, 6, 160, 1, 1, 1],
    ],
    "small": [
        [3, 1, 16, 1, 0, 2], [3, 4.5, 24, 0, 0, 2], [3, 3.67, 24, 0, 0, 1], [5, 4, 40, 1, 1, 2],
        [5, 6, 40, 1, 1, 1], [5, 6, 40, 1, 1, 1], [5, 3, 48, 1, 1, 1], [5, 3, 48, 1, 1, 1],
        [5, 6, 96, 1, 1, 2], [5, 6, 96, 1, 1, 1], [5, 6, 96, 1, 1, 1],
    ],
}
_V3_LAST_CHANNEL = {"large": 1280, "small": 1024}


def _round_up8(value: float) -> int:
    return int(math.ceil(value / 8) * 8)


def _nearest8(value: float) -> int:
    # The TF reference rounding (MobileNetV3 and torchvision): nearest multiple of 8, never more than 10% down.
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def _check_width(width_mult: Any, name: str) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or not width_mult > 0:
        raise RecipeError(f"{name}: width_mult must be a positive number (e.g. 1.0, 1.35); got {width_mult!r}.")
    return float(width_mult)


def _check_rows(structure: Any, row_len: int, layout: str, name: str) -> list[list[float]]:
    ok = isinstance(structure, Sequence) and not isinstance(structure, str) and len(structure) > 0
    rows = [list(row) for row in structure] if ok else []
    ok = ok and all(len(row) == row_len and all(isinstance(v, int | float) for v in row) for row in rows)
    ok = ok and all(row[-1] in (1, 2) and all(v >= 0 for v in row) for row in rows)
    if not ok:
        raise RecipeError(f"{name}: structure must be a non-empty list of rows {layout} with stride 1 or 2; got "
                          f"{structure!r}.")
    return rows


def _check_dropout(dropout: Any, name: str) -> float:
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise RecipeError(f"{name}: dropout must be in [0, 1); got {dropout!r}.")
    return float(dropout)


def _replace_stem(features: nn.Sequential, in_channels: int) -> None:
    if in_channels != 3:
        old = features[0][0]
        features[0][0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                   bias=False)
        nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")


def build_mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    structure: Sequence[Sequence[float]] | None = None,
    dropout: float = 0.0,
    in_channels: int = 3,
    name: str = "custom_mobilenet_v2",
) -> nn.Module:
    """torchvision MobileNetV2 with SuperGradients' width rule (see the module docstring)."""
    from torchvision.models import MobileNetV2
    from torchvision.ops import Conv2dNormActivation

    width_mult = _check_width(width_mult, name)
    rows = _check_rows(MOBILENET_V2_STRUCTURE if structure is None else structure, 4, "[t, c, n, s]", name)
    setting = [[int(t), _round_up8(c * width_mult) if t > 1 else int(c), int(n), int(s)] for t, c, n, s in rows]
    # round_nearest=1 makes torchvision keep the channel counts given here exactly.
    model = MobileNetV2(num_classes=num_classes, width_mult=1.0, inverted_residual_setting=setting,
                        round_nearest=1, dropout=_check_dropout(dropout, name))
    last_channel = _round_up8(1280 * width_mult) if width_mult > 1.0 else 1280
    if last_channel != model.last_channel:
        model.features[-1] = Conv2dNormActivation(setting[-1][1], last_channel, kernel_size=1,
                                                  activation_layer=nn.ReLU6)
        model.classifier[-1] = nn.Linear(last_channel, num_classes)
        nn.init.kaiming_normal_(model.features[-1][0].weight, mode="fan_out")
        nn.init.normal_(model.classifier[-1].weight, 0, 0.01)
        nn.init.zeros_(model.classifier[-1].bias)
        model.last_channel = last_channel
    _replace_stem(model.features, in_channels)
    model.num_classes = num_classes
    return model


@register_model("mobile_net_v2_135")
def mobile_net_v2_135(num_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 at width 1.35 (recipe key ``architecture: mobile_net_v2_135``), SuperGradients' layout.

    5.84M parameters at 1000 classes. No paper lists width 1.35; SuperGradients reports 75.73% ImageNet top-1
    for it. The nearest published widths: 1.3 -> 5.34M and 1.4 -> 6.06M (TF-slim MobileNetV2 model zoo).
    """
    return build_mobilenet_v2(num_classes, 1.35, None, dropout, in_channels, "mobile_net_v2_135")


@register_model("custom_mobilenet_v2")
def custom_mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    structure: Sequence[Sequence[float]] | None = None,
    dropout: float = 0.0,
    in_channels: int = 3,
) -> nn.Module:
    """MobileNetV2 with a width multiplier and/or stages of your own (``architecture: custom_mobilenet_v2``).

    ``structure``: rows ``[t, c, n, s]`` (expansion, channels, repeats, stride; paper Table 2, the default);
    ``width_mult`` scales the stages by SuperGradients' rule. At 1.0 it is torchvision's ``mobilenet_v2``
    (3.50M parameters; paper 3.4M, TF-slim zoo 3.47M).
    """
    return build_mobilenet_v2(num_classes, width_mult, structure, dropout, in_channels, "custom_mobilenet_v2")


def build_mobilenet_v3(
    structure: Sequence[Sequence[float]] | None = None,
    mode: str = "large",
    width_mult: float = 1.0,
    num_classes: int = 1000,
    dropout: float = 0.2,
    in_channels: int = 3,
    name: str = "mobilenet_v3_custom",
) -> nn.Module:
    """torchvision MobileNetV3 from SuperGradients' rows ``[k, t, c, se, hs, s]`` and width rule."""
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
    from torchvision.ops import Conv2dNormActivation

    if mode not in _V3_LAST_CHANNEL:
        raise RecipeError(f"{name}: mode must be 'large' or 'small'; got {mode!r}.")
    width_mult = _check_width(width_mult, name)
    rows = _check_rows(MOBILENET_V3_STRUCTURES[mode] if structure is None else structure, 6,
                       "[kernel, expansion, channels, se 0/1, hard_swish 0/1, stride]", name)
    if any(int(row[0]) % 2 == 0 for row in rows):
        raise RecipeError(f"{name}: kernel sizes must be odd; got {[row[0] for row in rows]}.")
    channels = _nearest8(16 * width_mult)
    setting = []
    for kernel, expansion, out, se, hard_swish, stride in rows:
        out_channels, expanded = _nearest8(out * width_mult), _nearest8(channels * expansion)
        # width_mult=1.0: the widths are already scaled here (SuperGradients scales the expansion from the
        # rounded input width, torchvision from the unscaled table value).
        setting.append(InvertedResidualConfig(channels, int(kernel), expanded, out_channels, bool(se),
                                              "HS" if hard_swish else "RE", int(stride), 1, 1.0))
        channels = out_channels
    base = _V3_LAST_CHANNEL[mode]
    last_channel = _nearest8(base * width_mult) if width_mult > 1.0 else base
    model = MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=_check_dropout(dropout, name))
    # torchvision's last 1x1 conv is 6x the last block's output; SuperGradients' is the last block's expansion.
    if expanded != 6 * channels:
        model.features[-1] = Conv2dNormActivation(channels, expanded, kernel_size=1, activation_layer=nn.Hardswish)
        model.classifier[0] = nn.Linear(expanded, last_channel)
        nn.init.kaiming_normal_(model.features[-1][0].weight, mode="fan_out")
        nn.init.normal_(model.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(model.classifier[0].bias)
    _replace_stem(model.features, in_channels)
    model.num_classes = num_classes
    return model


@register_model("mobilenet_v3_custom")
def mobilenet_v3_custom(
    mode: str = "large",
    width_mult: float = 1.0,
    structure: Sequence[Sequence[float]] | None = None,
    num_classes: int = 1000,
    dropout: float = 0.2,
    in_channels: int = 3,
) -> nn.Module:
    """MobileNetV3 with a width multiplier and/or rows of your own (``architecture: mobilenet_v3_custom``).

    ``mode`` ``large``/``small`` picks the last layer width (1280/1024) and the default ``structure`` (paper
    Tables 1-2, rows ``[k, t, c, se, hs, s]``, SuperGradients' form). At width 1.0 it has torchvision's
    ``mobilenet_v3_large``/``small`` layout: 5.48M / 2.54M parameters (paper: 5.4M / 2.5M).
    """
    return build_mobilenet_v3(structure, mode, width_mult, num_classes, dropout, in_channels)


# SuperGradients' InvertedResidual.conv indices -> torchvision's (which nests conv+BN+act as Conv2dNormActivation).
_SG_V2_EXPANDING = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_SG_V2_DEPTHWISE_FIRST = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # expansion-1 blocks have no 1x1 expand


def mobilenet_v2_state_dict_from_super_gradients(state: Mapping[str, Any]) -> dict[str, Any]:
    """A SuperGradients MobileNetV2 state dict (``mobilenet_v2``, ``mobile_net_v2_135``, ``custom_mobilenet_v2``)
    renamed to torchvision's MobileNetV2 keys, which these factories build; tensors unchanged.

    The stem (``features.0.{0,1}``), last 1x1 (``features.N.{0,1}``) and ``classifier.1`` keep their names; only
    the blocks' ``conv.<i>`` indices differ. A key outside that layout raises RecipeError naming it.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 5 and parts[0] == "features" and parts[2] == "conv":
            expanding = f"features.{parts[1]}.conv.6.weight" in state
            index = (_SG_V2_EXPANDING if expanding else _SG_V2_DEPTHWISE_FIRST).get(parts[3])
            if index is None:
                raise RecipeError(f"Key {key!r} is not part of a SuperGradients MobileNetV2 block.")
            renamed[f"features.{parts[1]}.conv.{index}.{'.'.join(parts[4:])}"] = value
        elif parts[0] in ("features", "classifier"):
            renamed[key] = value
        else:
            raise RecipeError(f"Key {key!r} is not part of a SuperGradients MobileNetV2 state dict (expected "
                              f"features.* and classifier.*).")
    return renamed
