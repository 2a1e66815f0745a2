"""SuperGradients' YOLO-NAS state-dict names -> ours (used by :meth:`YoloNAS.super_gradients_key`).

Names from SuperGradients 3.7 (github.com/Deci-AI/super-gradients, ``src/super_gradients``):

* ``training/models/detection_models/customizable_detector.py``: ``backbone``, ``neck``, ``heads``;
* ``modules/detection_modules.py`` ``NStageBackbone``: ``stem``, ``stage1``-``stage4``, ``context_module``;
* ``training/models/detection_models/yolo_nas/yolo_stages.py``: ``YoloNASStem.conv``, ``YoloNASStage``
  (``downsample``, ``blocks``), ``YoloNASUpStage`` (``reduce_skip1/2``, ``conv``, ``upsample``, ``downsample``,
  ``reduce_after_concat``, ``blocks``), ``YoloNASDownStage`` (``conv``, ``blocks``), ``YoloNASCSPLayer``
  (``conv1``-``conv3``, ``bottlenecks``), ``YoloNASBottleneck`` (``alpha``, ``cv1``, ``cv2``);
* ``training/models/detection_models/yolo_nas/panneck.py``: ``neck1``-``neck4``;
* ``training/models/detection_models/csp_darknet53.py`` ``SPP``: ``cv1``, ``cv2``;
* ``modules/conv_bn_act_block.py``: ``Conv`` (``conv``, ``bn``, ``act``, as our ``ConvBNReLU``) and ``ConvBNAct``
  (the head's ``ConvBNReLU``: ``seq.conv``, ``seq.bn``);
* ``modules/qarepvgg_block.py`` ``QARepVGGBlock``: ``branch_3x3.conv/bn``, ``branch_1x1``, ``post_bn``, and an
  ``rbr_reparam`` 3x3 convolution with bias registered as a placeholder before fusing;
* ``training/models/detection_models/yolo_nas/dfl_heads.py``: ``NDFLHeads.head1``..``headN`` (``YoloNASDFLHead``:
  ``stem``, ``cls_convs``, ``reg_convs``, ``cls_pred``, ``reg_pred``). Its ``proj_conv`` and cached anchors are
  non-persistent buffers: SG never writes them.

Backbone and neck already carry SG's names here; only the heads are renamed.
"""

from __future__ import annotations

import re

__all__ = ["yolo_nas_key"]

_HEAD = re.compile(r"^heads\.head(\d+)\.(.+)$")
# QARepVGGBlock.rbr_reparam before fusing: SG never uses it (forward runs the branches), and our block creates its
# fused convolution from the branches in fuse_branches(), so the placeholder's values have no place here.
_PLACEHOLDER = re.compile(r"\.rbr_reparam\.(weight|bias)$")


def yolo_nas_key(sg_name: str) -> str | None:
    """Our key for SG's YOLO-NAS ``sg_name``; None for SG's unused ``rbr_reparam`` placeholders and anything
    outside ``backbone``/``neck``/``heads``."""
    if _PLACEHOLDER.search(sg_name):
        return None
    if sg_name.startswith(("backbone.", "neck.")):
        return sg_name
    match = _HEAD.match(sg_name)
    if match is None:
        return None
    index, rest = int(match.group(1)), match.group(2)
    # SG's heads are attributes head1..headN; ours a ModuleList. Its ConvBNReLU nests conv/bn in ``seq``.
    return f"heads.heads.{index - 1}.{rest.replace('.seq.', '.')}"
