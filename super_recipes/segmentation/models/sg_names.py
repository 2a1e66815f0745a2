"""SuperGradients' segmentation state-dict names -> ours (used by the ``super_gradients_key`` and
``super_gradients_convert`` methods of :class:`~.stdc.STDCSeg`, :class:`~.ddrnet.DDRNet` and
:class:`~.pplite_seg.PPLiteSeg`).

Names from SuperGradients 3.7 (github.com/Deci-AI/super-gradients, ``src/super_gradients``):

* ``modules/conv_bn_act_block.py`` ``ConvBNAct`` and ``modules/conv_bn_relu_block.py`` ``ConvBNReLU`` (a
  ConvBNAct): ``seq.conv``, ``seq.bn`` (absent with ``use_normalization=False``), ``seq.act``; ours ``conv``,
  ``bn``, ``act``;
* ``training/models/segmentation_models/common.py`` ``SegmentationHead``: ``seg_head`` = (0 ConvBNReLU 3x3,
  1 Dropout, 2 Conv2d 1x1 without bias); ours :class:`~.common.SegHead` (``conv``, ``classifier``);
* ``training/models/segmentation_models/stdc.py``: ``STDCBackbone.stages`` (``block_s2`` and ``block_s4``: one
  ConvBNReLU each, ours ``stem2``/``stem4``; ``block_s8/16/32``: ``STDCBlock`` s, ours ``stage8/16/32``),
  ``STDCBlock.conv_list`` (ours ``convs``; in a stride-2 block ``conv_list.1`` is (0 the depthwise strided
  ConvBNReLU without activation, ours ``downsample``, 1 the 3x3 ConvBNReLU, ours ``convs.1``); ``skip_step1`` is
  an AvgPool2d in the ``avg_pool`` mode every STDC model uses), ``STDCSegmentationBase`` (``cp`` the
  ``ContextPath``: ``backbone``, ``context_embedding.context_embedding.1``, ``arm16``/``arm32``
  (``conv_first``, ``attention_block.1``), ``upsample16``/``upsample32`` (1: the ConvBNReLU after the
  upsampling); ``ffm``: ``pw_conv``, ``attention_block.1`` (a ConvBNReLU without BN), ``attention_block.2``;
  ``segmentation_head.0``, and with ``use_aux_heads`` ``aux_head_s16.0``, ``aux_head_s32.0``,
  ``detail_head8.0``);
* ``training/models/segmentation_models/ddrnet.py``: ``ConvBN`` = Sequential(0 conv, 1 BN), ``BasicDDRBackBone``
  under ``_backbone`` (``stem``, ``layer1``-``layer4``, ``layer3`` a ModuleList of ``layer3_repeats``
  stages), ``DDRNet`` (``compression3``/``down3``/``layer3_skip``: ModuleLists of ``layer3_repeats``;
  ``compression4``, ``down4``, ``layer4_skip``, ``layer5_skip``, ``layer5``, ``spp``, ``final_layer``,
  ``seghead_extra``), ``DAPPM`` (``branches.{i}.down_scale`` = ([pool], BN, ReLU, conv), ``branches.{i}.process``,
  ``compression``, ``shortcut``), ``SegmentHead`` (``bn1``, ``conv1``, ``bn2``, ``conv2``);
  ``training/models/classification_models/resnet.py`` ``BasicResNetBlock`` / ``Bottleneck`` (``conv1``-``conv3``,
  ``bn1``-``bn3``, ``shortcut.0/1``), ours a ``body`` of ConvBNReLUs and a ConvBNReLU ``shortcut``;
* ``training/models/segmentation_models/ppliteseg.py``: ``PPLiteSegEncoder`` ``encoder`` (``backbone`` an
  STDCBackbone, ``context_module`` the ``SPPM`` of ``context_modules.py``: ``branches.{i}.1``, ``conv_out``;
  ``proj_convs.{level}``, ours ``decoder.{level}.conv_low``), ``PPLiteSegDecoder`` ``decoder.up_stages.{j}``
  (``UAFM``: ``conv_atten``, ``conv_out``; ``proj_skip`` is an Identity in every published size), ``seg_head.0``,
  ``aux_heads.{0,1,2}.0``. SG's decoder runs deepest first (``up_stages.0`` at 1/32), ours indexes its UAFMs by
  level, shallowest first (``decoder.0`` at 1/8).

What a rename cannot do:

* **DDRNet**: SG's two stem convolutions (``_backbone.stem.{i}.0``) carry a bias, ours none (the BatchNorm after
  them cancels it). :func:`ddrnet_values` folds it into that BatchNorm's ``running_mean`` (``mean - bias``):
  the same outputs in eval mode, and in training mode too (the batch mean moves with the bias).
* **PP-LiteSeg**: SG's UAFM attends to the *upsampled deeper* feature (``out = up * a + skip * (1 - a)``, ``a``
  from the channel means and maxima ``[up, up, skip, skip]``), ours (and PaddleSeg's) to the *lower* one
  (``out = low * w + high * (1 - w)``, from ``[low, low, high, high]``). :func:`uafm_values` swaps the two input
  pairs of the first attention convolution and negates the scale and shift of the second one's BatchNorm, so
  that ``w = 1 - a`` exactly.

SG's tensors for those are renamed under :data:`SG_VALUES` (a key of ours, in SG's convention); only the
family's conversion turns them into ours, so that a loader without it fails instead of loading wrong values.

SG modules that ours has no place for by design are renamed under :data:`SG_ONLY`, a prefix the models list in
``checkpoint_prefixes_without_place``: the load leaves them out and reports them. These are training-only heads:
SG's STDC ``aux_head_s16``/``aux_head_s32`` read the backbone's 1/16 and 1/32 features (512 and 1024 channels),
ours (``aux8``/``aux16``, as the official STDC-Seg ``conv_out16``/``conv_out32``) the context path's 128; SG's
PP-LiteSeg ``aux_heads`` read the three projected encoder features, ours (``aux16``/``aux32``, as PaddleSeg) the
1/16 and 1/32 decoder outputs; and every auxiliary head when our model is built without ``use_aux_heads``.
"""

from __future__ import annotations

import re

import torch

__all__ = ["SG_ONLY", "SG_VALUES", "ddrnet_key", "ddrnet_values", "pp_lite_seg_key", "pp_lite_seg_values",
           "stdc_backbone_key", "stdc_key", "uafm_values"]

SG_ONLY = "super_gradients_only"
SG_VALUES = "super_gradients_values"

_CONV_BN = r"seq\.(conv|bn)\."  # ConvBNReLU's inner names: ours drop the ``seq`` level


def _seg_head(rest: str, ours: str) -> str | None:
    """SG SegmentationHead (after ``<head>.0.seg_head.``) -> our SegHead ``ours``."""
    match = re.match(r"^0\." + _CONV_BN + r"(.+)$", rest)
    if match:
        return f"{ours}.conv.{match.group(1)}.{match.group(2)}"
    match = re.match(r"^2\.(weight)$", rest)
    return f"{ours}.classifier.{match.group(1)}" if match else None


# ---- STDC backbone (STDC-Seg and PP-LiteSeg) -------------------------------------------------------------------

def stdc_backbone_key(rest: str) -> str | None:
    """SG STDCBackbone name (after ``cp.backbone.`` / ``encoder.backbone.``) -> ours (after ``backbone.``)."""
    match = re.match(r"^stages\.block_s(2|4)\.0\." + _CONV_BN + r"(.+)$", rest)
    if match:
        return f"stem{match.group(1)}.{match.group(2)}.{match.group(3)}"
    match = re.match(r"^stages\.block_s(8|16|32)\.(\d+)\.conv_list\.(\d+)\.(.+)$", rest)
    if match is None:
        return None  # skip_step1 as a ConvBNReLU (the unused ``dw_conv`` mode), the classifier's conv_last/fc/linear
    ratio, block, step, inner = match.groups()
    stage = f"stage{ratio}.{block}"
    # A stride-2 block's conv_list.1 is (0: the depthwise downsampling, ours ``downsample``; 1: the 3x3 conv).
    down = re.match(r"^0\." + _CONV_BN + r"(.+)$", inner) if step == "1" else None
    if down:
        return f"{stage}.downsample.{0 if down.group(1) == 'conv' else 1}.{down.group(2)}"
    conv = re.match(r"^" + (r"(?:1\.)?" if step == "1" else "") + _CONV_BN + r"(.+)$", inner)
    return f"{stage}.convs.{step}.{conv.group(1)}.{conv.group(2)}" if conv else None


# ---- STDC-Seg ---------------------------------------------------------------------------------------------------

_STDC_CONTEXT = ((r"^cp\.context_embedding\.context_embedding\.1\.seq\.", "context.conv_global."),
                 (r"^cp\.arm(16|32)\.conv_first\.seq\.", r"context.arm\1.conv."),
                 (r"^cp\.arm(16|32)\.attention_block\.1\.seq\.", r"context.arm\1.attention."),
                 (r"^cp\.upsample(16|32)\.1\.seq\.", r"context.conv_head\1."),
                 (r"^ffm\.pw_conv\.seq\.", "ffm.conv."),
                 (r"^ffm\.attention_block\.1\.seq\.conv\.", "ffm.attention.0."),
                 (r"^ffm\.attention_block\.2\.", "ffm.attention.2."))


def stdc_key(sg_name: str, with_aux: bool) -> str | None:
    """Our key for SG's STDC-Seg ``sg_name``.

    :param with_aux: our model has its auxiliary and detail heads (``use_aux_heads``).
    """
    if sg_name.startswith("cp.backbone."):
        rest = stdc_backbone_key(sg_name[len("cp.backbone."):])
        return None if rest is None else f"backbone.{rest}"
    for pattern, replacement in _STDC_CONTEXT:
        if re.match(pattern, sg_name):
            return re.sub(pattern, replacement, sg_name)
    match = re.match(r"^(segmentation_head|detail_head8|aux_head_s16|aux_head_s32)\.0\.seg_head\.(.+)$", sg_name)
    if match is None:
        return None
    head, rest = match.groups()
    if head == "segmentation_head":
        return _seg_head(rest, "heads.main")
    if head == "detail_head8" and with_aux:  # the same head on the same 1/8 backbone features as ours
        return _seg_head(rest, "heads.detail")
    return f"{SG_ONLY}.{sg_name}"  # SG's aux heads read other features than ours; or ours has none


# ---- DDRNet -----------------------------------------------------------------------------------------------------

# Inside SG's BasicResNetBlock / Bottleneck -> ours (body of ConvBNReLUs, ConvBNReLU shortcut).
_BLOCK = {"conv1": "body.0.conv", "bn1": "body.0.bn", "conv2": "body.1.conv", "bn2": "body.1.bn",
          "conv3": "body.2.conv", "bn3": "body.2.bn", "shortcut.0": "shortcut.conv", "shortcut.1": "shortcut.bn"}
# SG SegmentHead (bn1, conv1, bn2, conv2) -> our DDRNetHead (conv = BN, ReLU, conv; classifier = BN, ReLU, conv).
_HEAD = {"bn1": "conv.0", "conv1": "conv.2", "bn2": "classifier.0", "conv2": "classifier.2"}
# SG stage -> ours (``layer3`` and the ``layer3_repeats`` lists only at index 0: DDRNet-23 repeats stage 3 once).
_STAGES = {"_backbone.layer1": "layer1", "_backbone.layer2": "layer2", "_backbone.layer3.0": "layer3",
           "_backbone.layer4": "layer4", "layer3_skip.0": "layer3_high", "layer4_skip": "layer4_high",
           "layer5_skip": "layer5_high", "layer5": "layer5"}
# SG ConvBN (Sequential conv, BN) -> ours (ConvBNReLU conv, bn).
_CONV_BNS = {"compression3.0": "compression3", "down3.0": "down3", "compression4": "compression4",
             "down4.0": "down4.0", "down4.1": "down4.1", "_backbone.stem.0": "stem.0", "_backbone.stem.1": "stem.1"}


def ddrnet_key(sg_name: str, with_aux: bool) -> str | None:
    """Our key for SG's DDRNet-23 / -23-slim ``sg_name`` (None for DDRNet-39's repeated stage 3 and for SG's
    ImageNet ``classification_mode`` layers).

    :param with_aux: our model has its auxiliary head (``use_aux_heads``).
    """
    match = re.match(r"^(.+)\.(\d+)\.(conv\d|bn\d|shortcut\.\d)\.(.+)$", sg_name)
    if match and match.group(1) in _STAGES:
        stage, block, part, leaf = match.groups()
        return f"backbone.{_STAGES[stage]}.{block}.{_BLOCK[part]}.{leaf}"
    match = re.match(r"^(.+)\.([01])\.(.+)$", sg_name)
    if match and match.group(1) in _CONV_BNS:
        module, part, leaf = match.groups()
        ours = f"backbone.{_CONV_BNS[module]}.{'conv' if part == '0' else 'bn'}.{leaf}"
        if module.startswith("_backbone.stem.") and (part, leaf) in (("0", "bias"), ("1", "running_mean")):
            return f"{SG_VALUES}.{ours}"  # SG's stem conv bias, folded into the BN by ddrnet_values
        return ours
    match = re.match(r"^spp\.branches\.(\d+)\.(down_scale|process)\.(\d+)\.(.+)$", sg_name)
    if match:
        branch, part, index, leaf = match.groups()
        if branch == "0":
            return f"spp.scale0.{index}.{leaf}" if part == "down_scale" else None
        return f"spp.{'scales' if part == 'down_scale' else 'process'}.{int(branch) - 1}.{index}.{leaf}"
    if sg_name.startswith(("spp.compression.", "spp.shortcut.")):
        return sg_name
    match = re.match(r"^(final_layer|seghead_extra)\.(bn1|conv1|bn2|conv2)\.(.+)$", sg_name)
    if match is None:
        return None
    head, part, leaf = match.groups()
    if head == "seghead_extra" and not with_aux:
        return f"{SG_ONLY}.{sg_name}"
    return f"heads.{'main' if head == 'final_layer' else 'aux'}.{_HEAD[part]}.{leaf}"


def ddrnet_values(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """Fold SG's stem conv biases into the following BatchNorm's ``running_mean``, in place in ``weights`` (our
    names). Returns {key read: our key written}."""
    done = {}
    for stem in ("backbone.stem.0", "backbone.stem.1"):
        bias, mean = f"{SG_VALUES}.{stem}.conv.bias", f"{SG_VALUES}.{stem}.bn.running_mean"
        if mean not in weights:
            continue
        target = f"{stem}.bn.running_mean"
        done[mean] = target
        weights[target] = weights.pop(mean)
        if bias in weights:
            # BN(conv(x) + b) normalises conv(x) + b - mean: the same as conv(x) against mean - b.
            weights[target] = weights[target] - weights.pop(bias)
            done[bias] = target
    return done


# ---- PP-LiteSeg -------------------------------------------------------------------------------------------------

def pp_lite_seg_key(sg_name: str, levels: int) -> str | None:
    """Our key for SG's PP-LiteSeg ``sg_name``.

    :param levels: feature levels of the decoder (3: 1/8, 1/16, 1/32).
    """
    if sg_name.startswith("encoder.backbone."):
        rest = stdc_backbone_key(sg_name[len("encoder.backbone."):])
        return None if rest is None else f"backbone.{rest}"
    match = re.match(r"^encoder\.context_module\.(?:branches\.(\d+)\.1|conv_out)\." + _CONV_BN + r"(.+)$", sg_name)
    if match:
        branch, part, leaf = match.groups()
        return f"sppm.{'conv_out' if branch is None else f'stages.{branch}'}.{part}.{leaf}"
    match = re.match(r"^encoder\.proj_convs\.(\d+)\." + _CONV_BN + r"(.+)$", sg_name)
    if match:
        return f"decoder.{match.group(1)}.conv_low.{match.group(2)}.{match.group(3)}"
    match = re.match(r"^decoder\.up_stages\.(\d+)\.(conv_atten\.[01]|conv_out)\." + _CONV_BN + r"(.+)$", sg_name)
    if match:
        stage, module, part, leaf = match.groups()
        ours = f"decoder.{levels - 1 - int(stage)}.{module.replace('conv_atten', 'attention')}.{part}.{leaf}"
        converted = (module == "conv_atten.0" and part == "conv") or (module == "conv_atten.1" and part == "bn"
                                                                      and leaf in ("weight", "bias"))
        return f"{SG_VALUES}.{ours}" if converted else ours
    match = re.match(r"^seg_head\.0\.seg_head\.(.+)$", sg_name)
    if match:
        return _seg_head(match.group(1), "heads.main")
    if sg_name.startswith("aux_heads."):
        return f"{SG_ONLY}.{sg_name}"  # SG's aux heads read the projected encoder features, ours the decoder's
    return None  # e.g. a UAFM proj_skip (no published size has one)


def uafm_values(weights: dict[str, torch.Tensor], uafm: str) -> dict[str, str]:
    """SG's UAFM attention (under :data:`SG_VALUES`) -> ours for our UAFM ``uafm`` (``decoder.{level}``), in place.
    Returns {key read: our key written}."""
    done = {}
    conv = f"{uafm}.attention.0.conv.weight"
    if f"{SG_VALUES}.{conv}" in weights:
        # SG's input maps [up mean, up max, skip mean, skip max], ours [low mean, low max, high mean, high max].
        weight = weights.pop(f"{SG_VALUES}.{conv}")
        weights[conv] = torch.cat((weight[:, 2:4], weight[:, 0:2]), dim=1)
        done[f"{SG_VALUES}.{conv}"] = conv
    for leaf in ("weight", "bias"):
        # Negated logits: sigmoid(-z) = 1 - sigmoid(z), the weight of the other input.
        bn = f"{uafm}.attention.1.bn.{leaf}"
        if f"{SG_VALUES}.{bn}" in weights:
            weights[bn] = -weights.pop(f"{SG_VALUES}.{bn}")
            done[f"{SG_VALUES}.{bn}"] = bn
    return done


def pp_lite_seg_values(weights: dict[str, torch.Tensor], levels: int) -> dict[str, str]:
    """:func:`uafm_values` for every decoder level."""
    done = {}
    for level in range(levels):
        done.update(uafm_values(weights, f"decoder.{level}"))
    return done
