"""SuperGradients' PP-YOLOE state-dict names -> ours (used by :meth:`PPYoloE.super_gradients_key`).

Names from SuperGradients 3.7 (github.com/Deci-AI/super-gradients, ``src/super_gradients``):

* ``training/models/detection_models/pp_yolo_e/pp_yolo_e.py`` ``PPYoloE``: ``backbone``, ``neck``, ``head``
  (ours: ``heads``, the CustomizableDetector part);
* ``training/models/detection_models/csp_resnet.py``: ``CSPResNetBackbone`` (``stem`` an OrderedDict Sequential
  ``conv1``-``conv3``, ours indexed ``0``-``2``; ``stages``), ``CSPResStage`` (``conv_down``, ``conv1``,
  ``conv2``, ``blocks``, ``attn``, ``conv3``), ``CSPResNetBasicBlock`` (``conv1``, ``conv2``);
* ``modules/se_blocks.py`` ``EffectiveSEBlock``: ``project`` (ours ``fc``);
* ``modules/repvgg_block.py`` ``RepVGGBlock``: ``branch_3x3`` / ``branch_1x1`` are Sequentials of ``conv`` and
  ``bn`` (ours indexed ``0``/``1``), ``alpha`` (PP-YOLOE+ only); no identity branch here, and ``rbr_reparam``
  only exists once fused;
* ``modules/conv_bn_act_block.py`` ``ConvBNAct``: ``seq.conv``, ``seq.bn`` (ours ``conv``, ``bn``);
* ``training/models/detection_models/pp_yolo_e/pan.py``: ``PPYoloECSPPAN`` (``fpn_stages``, ``fpn_routes``,
  ``pan_stages``, ``pan_routes``), ``CSPStage`` (``conv1``, ``conv2``, ``convs``, ``conv3``; ``convs`` is an
  OrderedDict Sequential ``"0"``, ``"1"``, ... with ``"spp"`` after block ``(n - 1) // 2`` in the deepest FPN
  stage; ours ``blocks``, indexed in the same order), ``PPYoloESPP`` (``conv``);
* ``training/models/detection_models/pp_yolo_e/pp_yolo_head.py`` ``PPYOLOEHead``: ``stem_cls``, ``stem_reg``
  (``ESEAttn``: ``fc``, ``conv``), ``pred_cls``, ``pred_reg``. Its ``proj_conv`` and cached anchors are
  non-persistent buffers: SG never writes them.

Level order: SG lists its head's levels deepest first (``fpn_strides: [32, 16, 8]``) and builds ``pan_routes`` /
``pan_stages`` so that index ``i`` produces level ``i`` of its deepest-first ``out_channels``; ours go shallowest
first (strides 8, 16, 32), so those indices are mirrored. The FPN stages and routes run deepest first in both.
"""

from __future__ import annotations

import re

__all__ = ["ppyoloe_key"]

# Inside any module: ConvBNAct's ``seq`` level, RepVGGBlock's named conv/bn branches, the ESE projection.
_PARTS = ((r"\.seq\.", "."), (r"\.(branch_3x3|branch_1x1)\.conv\.", r".\1.0."),
          (r"\.(branch_3x3|branch_1x1)\.bn\.", r".\1.1."), (r"\.attn\.project\.", ".attn.fc."))
_STEM = re.compile(r"^backbone\.stem\.conv(\d+)\.(.+)$")
_CSP = re.compile(r"^neck\.(fpn_stages|pan_stages)\.(\d+)\.(\d+)\.convs\.(\w+)\.(.+)$")
_ROUTE = re.compile(r"^neck\.(pan_routes|pan_stages)\.(\d+)\.(.+)$")
_HEAD = re.compile(r"^head\.(stem_cls|stem_reg|pred_cls|pred_reg)\.(\d+)\.(.+)$")


def ppyoloe_key(sg_name: str, levels: int, spp_position: int | None) -> str | None:
    """Our key for SG's PP-YOLOE ``sg_name``.

    :param levels: feature levels of the neck and head (3 as published).
    :param spp_position: where our deepest FPN stage holds its SPP among its ``blocks`` (SG's ``convs.spp``),
        None without SPP.
    """
    name = sg_name
    for pattern, replacement in _PARTS:
        name = re.sub(pattern, replacement, name)
    if name.startswith("backbone."):
        match = _STEM.match(name)
        return f"backbone.stem.{int(match.group(1)) - 1}.{match.group(2)}" if match else name
    if name.startswith("neck."):
        return _neck_key(name, levels, spp_position)
    match = _HEAD.match(name)
    if match is None:
        return None
    part, index, rest = match.groups()
    return f"heads.{part}.{levels - 1 - int(index)}.{rest}"


def _neck_key(name: str, levels: int, spp_position: int | None) -> str | None:
    match = _CSP.match(name)
    if match is not None:
        kind, level, repeat, block, rest = match.groups()
        if block == "spp":
            if spp_position is None:
                return None  # SG has an SPP where our neck was built without one
            position = spp_position
        elif not block.isdigit():
            return None
        else:
            # Blocks after the SPP sit one index further in our plain Sequential.
            position = int(block) + (1 if kind == "fpn_stages" and spp_position is not None and level == "0"
                                     and int(block) >= spp_position else 0)
        name = f"neck.{kind}.{level}.{repeat}.blocks.{position}.{rest}"
    match = _ROUTE.match(name)
    if match is not None:
        kind, index, rest = match.groups()
        name = f"neck.{kind}.{levels - 2 - int(index)}.{rest}"
    return name
