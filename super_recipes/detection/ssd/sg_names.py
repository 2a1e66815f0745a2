"""SuperGradients' SSD-Lite MobileNetV2 state-dict names -> ours (used by
:meth:`SSDLiteMobileNetV2.super_gradients_key`).

Names from SuperGradients 3.7 (github.com/Deci-AI/super-gradients, ``src/super_gradients``):

* ``training/models/detection_models/ssd.py`` ``SSDLiteMobileNetV2``: a ``CustomizableDetector``
  (``training/models/detection_models/customizable_detector.py``: ``backbone``, ``neck``, ``heads``) built from
  ``recipes/arch_params/ssd_lite_mobilenetv2_arch_params.yaml``;
* ``modules/detection_modules.py`` ``MobileNetV2Backbone`` (a ``MultiOutputBackbone``:
  ``multi_output_backbone``, whose ``modules/multi_output_modules.py`` ``MultiOutputModule`` keeps the wrapped
  network as child ``"0"``), ``SSDInvertedResidualNeck`` (``neck_blocks``) and ``SSDHead`` (``loc``, ``conf``;
  its ``SeperableConv2d`` is a Sequential of depthwise conv, BN, ReLU, 1x1 conv, as ours);
* ``training/models/classification_models/mobilenetv2.py``: ``features``; ``InvertedResidual.conv`` is one flat
  Sequential (expansion 1: dw conv, bn, relu6, pw conv, bn; otherwise pw, bn, relu6, dw, bn, relu6, pw, bn) where
  torchvision's (ours) nests ``Conv2dNormActivation`` s.

SG's ``SSDHead`` also stores its default boxes as frozen parameters (``dboxes_xy``, ``dboxes_wh``, ``scales``,
``img_size``, from ``training/utils/ssd_utils.py`` ``DefaultBoxes``); our head recomputes the same boxes from the
``anchors`` arch_params for every input size, so those four have no place here.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["SG_SSD_DEFAULT_BOX_KEYS", "ssd_lite_key"]

SG_SSD_DEFAULT_BOX_KEYS = ("heads.dboxes_xy", "heads.dboxes_wh", "heads.scales", "heads.img_size")

# SG flat InvertedResidual.conv index -> torchvision's nested name (the same rule as the classification
# MobileNetV2's, super_recipes.models.sg_checkpoints).
_EXPAND_1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_BACKBONE = re.compile(r"^backbone\.multi_output_backbone\.0\.features\.(\d+)\.(.+)$")
_NECK = re.compile(r"^neck\.neck_blocks\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^conv\.(\d+)\.(.+)$")


def ssd_lite_key(sg_name: str, backbone_expand_1: Collection[int] = (1,),
                 neck_expand_1: Collection[int] = ()) -> str | None:
    """Our key for SG's SSD-Lite MobileNetV2 ``sg_name``; None for SG's stored default boxes.

    :param backbone_expand_1: indices of ``features`` blocks without a 1x1 expansion (MobileNetV2: block 1).
    :param neck_expand_1: indices of neck blocks without one (none in SG's layout: expand ratios 0.2-0.5).
    """
    if sg_name in SG_SSD_DEFAULT_BOX_KEYS:
        return None
    if sg_name.startswith(("heads.loc.", "heads.conf.")):
        return sg_name
    for pattern, prefix, expand_1 in ((_BACKBONE, "backbone.features", backbone_expand_1),
                                      (_NECK, "neck.neck_blocks", neck_expand_1)):
        match = pattern.match(sg_name)
        if match is None:
            continue
        index, rest = match.groups()
        block = _BLOCK.match(rest)
        if block is None:
            return f"{prefix}.{index}.{rest}"  # features.0 / features.18: conv, bn as in torchvision
        layer, tail = block.groups()
        ours = (_EXPAND_1 if int(index) in expand_1 else _EXPANDED).get(layer)
        return None if ours is None else f"{prefix}.{index}.conv.{ours}.{tail}"
    return None
