"""RegNetY by SuperGradients' names (``regnetY200`` ... ``regnetY800``, ``custom_regnet``, ``nas_regnet``).

Built on torchvision's :class:`torchvision.models.regnet.RegNet` (Y blocks: grouped bottleneck + squeeze-and-
excitation), but the stage plan (depths, widths, group widths) is computed here with the quantisation rule of
the paper's reference implementation (pycls, Radosavovic et al. 2020, "Designing Network Design Spaces"), which
SuperGradients follows too. torchvision's own ``BlockParams.from_init_params`` rounds widths to the group width
differently (half up instead of half to even), which gives RegNetY-800MF 6.43M parameters instead of the
published 6.3M, so the plan is passed to torchvision as an explicit :class:`BlockParams`.

Two sets of (w0, wa, wm) exist for the four named models: the paper's (pycls ``configs/dds_baselines``) and
SuperGradients' rounded ones (e.g. wa=36 instead of 36.44 for 200MF), which give different widths at 200, 400 and
600MF. ``variant="paper"`` (default) gives the published parameter counts; ``variant="super_gradients"`` gives
SuperGradients' exact layout, needed to load a checkpoint trained with SuperGradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model

__all__ = ["REGNETY_CONFIGS", "RegNetY", "regnet_stage_plan", "regnet_state_dict_from_super_gradients"]

# (initial_width w0, slope wa, quantized_param wm, network_depth d, bottleneck_ratio, group_width) per model.
# "paper": pycls configs/dds_baselines/regnet/RegNetY-*_dds_*.yaml; "super_gradients": SG's regnet.py classes.
REGNETY_CONFIGS: dict[str, dict[str, tuple[float, float, float, int, float, int]]] = {
    "paper": {
        "regnetY200": (24, 36.44, 2.49, 13, 1, 8),
        "regnetY400": (48, 27.89, 2.09, 16, 1, 8),
        "regnetY600": (48, 32.54, 2.32, 15, 1, 16),
        "regnetY800": (56, 38.84, 2.4, 14, 1, 16),
    },
    "super_gradients": {
        "regnetY200": (24, 36, 2.5, 13, 1, 8),
        "regnetY400": (48, 28, 2.1, 16, 1, 8),
        "regnetY600": (48, 33, 2.3, 15, 1, 16),
        "regnetY800": (56, 39, 2.4, 14, 1, 16),
    },
}

# Published ImageNet parameter counts (millions), pycls MODEL_ZOO.md "RegNetY Models" table (= paper Table).
PUBLISHED_PARAMS_M = {"regnetY200": 3.2, "regnetY400": 4.3, "regnetY600": 6.1, "regnetY800": 6.3}

STEM_WIDTH = 32  # the paper's (and SG's) stem: 3x3 stride-2 convolution to 32 channels


def regnet_stage_plan(
    initial_width: float,
    slope: float,
    quantized_param: float,
    network_depth: int,
    bottleneck_ratio: float = 1,
    group_width: int = 8,
) -> tuple[list[int], list[int], list[int]]:
    """Stage depths, widths and group widths of a RegNet from its generating parameters.

    Per-block widths ``u_j = w0 + wa * j`` (paper eq. 2) are snapped to ``w0 * wm**round(log_wm(u_j / w0))``
    (eq. 3), rounded to a multiple of 8; equal consecutive widths form a stage. Group widths are capped by the
    bottleneck width and widths rounded to a multiple of the group width. Python's ``round`` (half to even) is
    used on purpose: it is what numpy does in pycls and SuperGradients, and it decides e.g. 136 -> 128 at 800MF.
    ``bottleneck_ratio`` divides (SuperGradients' meaning); the returned widths are the block output widths.
    """
    _check_generators(initial_width, slope, quantized_param, network_depth, bottleneck_ratio, group_width)
    widths_per_block = []
    for j in range(int(network_depth)):
        u = initial_width + slope * j
        exponent = round(math.log(u / initial_width) / math.log(quantized_param))
        widths_per_block.append(int(8 * round(initial_width * quantized_param**exponent / 8)))
    depths: list[int] = []
    raw_widths: list[int] = []
    for width in sorted(widths_per_block):  # widths grow with j, so sorting only groups equal ones
        if raw_widths and raw_widths[-1] == width:
            depths[-1] += 1
        else:
            raw_widths.append(width)
            depths.append(1)
    group_widths = [int(min(group_width, w // bottleneck_ratio)) for w in raw_widths]
    # SuperGradients rounds with the requested group width, not the capped one; kept for identical shapes.
    widths = [int(round(w // bottleneck_ratio / group_width) * group_width) for w in raw_widths]
    return depths, widths, group_widths


def _check_generators(w0: float, wa: float, wm: float, depth: int, bottleneck_ratio: float, group_width: int) -> None:
    problems = []
    if not w0 > 0:
        problems.append(f"initial_width must be > 0 (got {w0})")
    if not wa > 0:
        problems.append(f"slope must be > 0 (got {wa})")
    if not wm > 1:
        problems.append(f"quantized_param must be > 1 (got {wm}); the paper uses about 2 to 3")
    if not (isinstance(depth, int) or float(depth).is_integer()) or depth < 1:
        problems.append(f"network_depth must be a positive integer (got {depth})")
    if not bottleneck_ratio > 0:
        problems.append(f"bottleneck_ratio must be > 0 (got {bottleneck_ratio})")
    if not (isinstance(group_width, int) and group_width >= 1):
        problems.append(f"group_width must be a positive integer (got {group_width})")
    if problems:
        raise RecipeError("RegNet arch_params: " + "; ".join(problems) + ".")


def _check_plan(depths: Sequence[int], widths: Sequence[int], group_widths: Sequence[int],
                bottleneck_ratio: float) -> None:
    # The RegNet design space (paper sec. 3): one group width, non-decreasing widths and depths (the last stage
    # may be shallower). SuperGradients asserts the same; a violation means the generators are off.
    problems = []
    if len(set(group_widths)) != 1:
        problems.append(f"group widths differ between stages {list(group_widths)} (a stage is narrower than "
                        f"group_width)")
    if any(a > b for a, b in zip(widths, widths[1:], strict=False)):
        problems.append(f"widths decrease {list(widths)}")
    if len(depths) > 2 and any(a > b for a, b in zip(depths[:-2], depths[1:-1], strict=False)):
        problems.append(f"depths decrease before the last stage {list(depths)}")
    for w, g in zip(widths, group_widths, strict=True):
        if w == 0 or int(w // bottleneck_ratio) % g:
            problems.append(f"width {w} / bottleneck_ratio {bottleneck_ratio} is not a multiple of group width {g}")
    if problems:
        raise RecipeError(
            f"RegNet stage plan depths={list(depths)} widths={list(widths)} group_widths={list(group_widths)} "
            f"is outside the RegNet design space: " + "; ".join(problems) + ". Change initial_width, slope, "
            "quantized_param, network_depth or group_width."
        )


def _se_fraction(se_ratio: float | None) -> float | None:
    # SuperGradients' se_ratio divides the block's input width (4 -> a quarter); torchvision's and the paper's
    # multiplies it (0.25). A value above 1 can only be the former, so both spellings are accepted.
    if se_ratio is None or se_ratio == 0:
        return None
    if not isinstance(se_ratio, int | float) or se_ratio < 0:
        raise RecipeError(f"RegNet se_ratio must be None/0 (no SE), a fraction like 0.25, or SuperGradients' "
                          f"divisor like 4; got {se_ratio!r}.")
    return 1.0 / se_ratio if se_ratio > 1 else float(se_ratio)


class RegNetY(nn.Module):
    """A torchvision RegNet with an explicit stage plan, optional dropout before ``fc`` and input channels.

    Module names are torchvision's (``stem``, ``trunk_output.block{i}.block{i}-{j}``, ``fc``), so torchvision
    RegNet checkpoints of the same plan load as they are.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        group_widths: Sequence[int],
        bottleneck_ratio: float = 1,
        stride: int = 2,
        se_ratio: float | None = 0.25,
        num_classes: int = 1000,
        dropout_prob: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        from torchvision.models.regnet import BlockParams, RegNet

        _check_plan(depths, widths, group_widths, bottleneck_ratio)
        if stride not in (1, 2):
            raise RecipeError(f"RegNet stride must be 1 or 2 (the stride of each stage's first block); got {stride}.")
        if not 0 <= dropout_prob < 1:
            raise RecipeError(f"RegNet dropout_prob must be in [0, 1); got {dropout_prob}.")
        params = BlockParams(list(depths), list(widths), list(group_widths), [1.0 / bottleneck_ratio] * len(widths),
                             [stride] * len(widths), _se_fraction(se_ratio))
        net = RegNet(params, num_classes=num_classes, stem_width=STEM_WIDTH)
        if in_channels != 3:
            net.stem[0] = nn.Conv2d(in_channels, STEM_WIDTH, 3, 2, 1, bias=False)
            nn.init.kaiming_normal_(net.stem[0].weight, mode="fan_out", nonlinearity="relu")
        # Own the children directly so state-dict keys are torchvision's (stem.*, trunk_output.*, fc.*).
        self.stem, self.trunk_output, self.avgpool, self.fc = net.stem, net.trunk_output, net.avgpool, net.fc
        self.dropout = nn.Dropout(dropout_prob) if dropout_prob > 0 else nn.Identity()
        self.num_classes = num_classes
        self.plan = {"depths": list(depths), "widths": list(widths), "group_widths": list(group_widths)}

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, shape ``(N, widths[-1])``."""
        return self.avgpool(self.trunk_output(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


def _build(initial_width: float, slope: float, quantized_param: float, network_depth: int,
           bottleneck_ratio: float, group_width: int, stride: int, se_ratio: float | None,
           num_classes: int, dropout_prob: float, in_channels: int) -> RegNetY:
    depths, widths, group_widths = regnet_stage_plan(initial_width, slope, quantized_param, int(network_depth),
                                                     bottleneck_ratio, group_width)
    return RegNetY(depths, widths, group_widths, bottleneck_ratio, stride, se_ratio, num_classes, dropout_prob,
                   in_channels)


def _named_factory(name: str) -> Any:
    def factory(num_classes: int = 1000, variant: str = "paper", dropout_prob: float = 0.0,
                in_channels: int = 3) -> RegNetY:
        if variant not in REGNETY_CONFIGS:
            raise RecipeError(f"{name}: variant must be one of {sorted(REGNETY_CONFIGS)}; got {variant!r}.")
        w0, wa, wm, depth, bottleneck_ratio, group_width = REGNETY_CONFIGS[variant][name]
        return _build(w0, wa, wm, depth, bottleneck_ratio, group_width, 2, 0.25, num_classes, dropout_prob,
                      in_channels)

    w0, wa, wm, depth, _, group_width = REGNETY_CONFIGS["paper"][name]
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"RegNetY-{name[len('regnetY'):]}MF (recipe key ``architecture: {name}``): w0={w0}, wa={wa}, wm={wm}, "
        f"depth={depth}, group width {group_width}, SE ratio 0.25. Published: {PUBLISHED_PARAMS_M[name]}M "
        f"parameters (pycls MODEL_ZOO.md, Radosavovic et al. 2020). arch_params: ``variant`` (``paper`` or "
        f"``super_gradients`` for SG's rounded generators and checkpoints), ``dropout_prob``, ``in_channels``."
    )
    return factory


for _name in REGNETY_CONFIGS["paper"]:
    register_model(_name)(_named_factory(_name))
del _name


@register_model("custom_regnet")
def custom_regnet(
    initial_width: float,
    slope: float,
    quantized_param: float,
    network_depth: int,
    bottleneck_ratio: float,
    group_width: int,
    stride: int = 2,
    se_ratio: float | None = None,
    num_classes: int = 1000,
    dropout_prob: float = 0.0,
    in_channels: int = 3,
) -> RegNetY:
    """RegNet from its generating parameters (recipe key ``architecture: custom_regnet``), SuperGradients' names.

    ``initial_width`` = w0, ``slope`` = wa, ``quantized_param`` = wm, ``network_depth`` = d (number of blocks),
    ``bottleneck_ratio`` divides the block width (1 in RegNetX/Y), ``group_width``, ``stride`` of each stage's
    first block, ``se_ratio`` (None: RegNetX; 4 or 0.25: RegNetY's SE on a quarter of the input width).
    E.g. the paper's RegNetY-200MF: 24, 36.44, 2.49, 13, 1, 8, se_ratio=0.25 (3.2M parameters, pycls zoo).
    """
    return _build(initial_width, slope, quantized_param, network_depth, bottleneck_ratio, group_width, stride,
                  se_ratio, num_classes, dropout_prob, in_channels)


@register_model("nas_regnet")
def nas_regnet(structure: Sequence[float], num_classes: int = 1000, dropout_prob: float = 0.0,
               in_channels: int = 3) -> RegNetY:
    """RegNet from one list, as SuperGradients' NAS variant takes it (recipe key ``architecture: nas_regnet``).

    ``structure`` = [initial_width, slope, quantized_param, network_depth, bottleneck_ratio, group_width, stride,
    se_ratio], with ``se_ratio <= 0`` meaning no SE. See :func:`custom_regnet` for each value.
    """
    if isinstance(structure, str) or not isinstance(structure, Sequence) or len(structure) != 8:
        raise RecipeError(
            "nas_regnet arch_params.structure must be a list of 8 numbers: [initial_width, slope, quantized_param, "
            f"network_depth, bottleneck_ratio, group_width, stride, se_ratio]; got {structure!r}."
        )
    w0, wa, wm, depth, bottleneck_ratio, group_width, stride, se_ratio = structure
    return _build(w0, wa, wm, depth, bottleneck_ratio, int(group_width), int(stride),
                  se_ratio if se_ratio > 0 else None, num_classes, dropout_prob, in_channels)


_SG_BLOCK_PARTS = {"conv_block_1": "f.a", "conv_block_2": "f.b", "conv_block_3": "f.c", "se.1": "f.se.fc1",
                   "se.3": "f.se.fc2", "shortcut": "proj"}


def regnet_state_dict_from_super_gradients(state: Mapping[str, Any]) -> dict[str, Any]:
    """A SuperGradients RegNet/RegNetY state dict (``net.stem...``, ``net.stage_{i}.blocks.block_{j}...``,
    ``net.head.fc``) renamed to :class:`RegNetY`'s keys; the tensors are unchanged (same layers, same order).

    Build the model with ``variant="super_gradients"`` (or ``custom_regnet`` with the same arch_params) so the
    shapes match. A key outside that layout raises RecipeError naming it.
    """
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        new = _sg_regnet_key(key.removeprefix("module."))
        if new is None:
            raise RecipeError(f"Key {key!r} is not part of a SuperGradients RegNet state dict (expected net.stem.*, "
                              f"net.stage_<i>.blocks.block_<j>.*, net.head.fc.*).")
        renamed[new] = value
    return renamed


def _sg_regnet_key(key: str) -> str | None:
    parts = key.split(".")
    if parts[:2] == ["net", "stem"] and len(parts) == 4 and parts[2] in ("conv", "bn"):
        return f"stem.{0 if parts[2] == 'conv' else 1}.{parts[3]}"
    if parts[:3] == ["net", "head", "fc"] and len(parts) == 4:
        return f"fc.{parts[3]}"
    if (len(parts) >= 6 and parts[0] == "net" and parts[1].startswith("stage_") and parts[2] == "blocks"
            and parts[3].startswith("block_")):
        stage, block = int(parts[1][len("stage_"):]) + 1, int(parts[3][len("block_"):])
        rest = ".".join(parts[4:])
        for sg_part, ours in _SG_BLOCK_PARTS.items():
            if rest.startswith(sg_part + "."):
                return f"trunk_output.block{stage}.block{stage}-{block}.{ours}.{rest[len(sg_part) + 1:]}"
    return None
