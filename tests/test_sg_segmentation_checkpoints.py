"""Loading SuperGradients (SG) checkpoints of STDC-Seg, DDRNet and PP-LiteSeg into our segmentation models.

The SG state dicts are written here by hand from SG 3.7's constructors (github.com/Deci-AI/super-gradients,
``src/super_gradients``): ``modules/conv_bn_act_block.py`` / ``conv_bn_relu_block.py`` (ConvBNReLU: ``seq.conv``,
``seq.bn``); ``training/models/segmentation_models/common.py`` (SegmentationHead), ``stdc.py`` (STDC1/2Backbone,
STDCBlock, ContextPath, FeatureFusionModule, STDC_SEG_DEFAULT_ARGS), ``ddrnet.py`` (DEFAULT_DDRNET_23[_SLIM]_PARAMS,
ConvBN, DAPPM, SegmentHead), ``ppliteseg.py`` (PPLiteSegT/B, UAFM), ``context_modules.py`` (SPPM);
``classification_models/resnet.py`` (BasicResNetBlock, Bottleneck). Every tensor gets distinct random values, so
"landed where SG's name says" is checked by value, never through our own mapping.

Two conventions differ in value, not in name, and are checked against SG's arithmetic written out here: DDRNet's
stem conv biases (folded into the BatchNorm) and PP-LiteSeg's UAFM attention (SG weighs the other input).
SG's auxiliary heads that read other features than ours are left out of the load and reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from super_recipes import models
from super_recipes.errors import RecipeError
from super_recipes.models import sg_checkpoints
from super_recipes.models.sg_checkpoints import SG_REPORT_ATTRIBUTE
from super_recipes.segmentation.models.sg_names import SG_ONLY

Layout = list[tuple[str, tuple[int, ...]]]


# ---- SG modules -------------------------------------------------------------------------------------------------

def bn(prefix: str, channels: int) -> Layout:
    return [(f"{prefix}.{n}", (channels,)) for n in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{prefix}.num_batches_tracked", ())]


def cbr(prefix: str, cin: int, cout: int, k: int, groups: int = 1) -> Layout:
    """SG ConvBNReLU (bias=False everywhere in these models): ``seq.conv``, ``seq.bn``."""
    return [(f"{prefix}.seq.conv.weight", (cout, cin // groups, k, k)), *bn(f"{prefix}.seq.bn", cout)]


def seg_head(prefix: str, cin: int, mid: int, num_classes: int) -> Layout:
    """``<head>.0`` = SegmentationHead: seg_head (0 ConvBNReLU 3x3, 1 Dropout, 2 Conv2d 1x1 without bias)."""
    return cbr(f"{prefix}.0.seg_head.0", cin, mid, 3) + [(f"{prefix}.0.seg_head.2.weight", (num_classes, mid, 1, 1))]


# ---- STDC: STDC1Backbone/STDC2Backbone (ch_widths 32, 64, 256, 512, 1024), STDCSegmentationBase ------------------

STDC_BLOCKS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}


def stdc_block(p: str, cin: int, cout: int, stride: int) -> Layout:
    """STDCBlock, steps 4, avg_pool downsampling: conv_list widths cout/2, /4, /8, /8; a stride-2 block makes
    conv_list.1 a Sequential(depthwise strided ConvBNReLU, the 3x3 ConvBNReLU)."""
    out, widths = cbr(f"{p}.conv_list.0", cin, cout // 2, 1), [cout // 2, cout // 4, cout // 8, cout // 8]
    for i in range(1, 4):
        name = f"{p}.conv_list.{i}"
        if i == 1 and stride == 2:
            out += cbr(f"{name}.0", cout // 2, cout // 2, 3, groups=cout // 2)
            name = f"{name}.1"
        out += cbr(name, widths[i - 1], widths[i], 3)
    return out


def sg_stdc_backbone(p: str, variant: str) -> Layout:
    out = cbr(f"{p}.stages.block_s2.0", 3, 32, 3) + cbr(f"{p}.stages.block_s4.0", 32, 64, 3)
    cin = 64
    for ratio, width, n in zip((8, 16, 32), (256, 512, 1024), STDC_BLOCKS[variant], strict=True):
        for i in range(n):
            out += stdc_block(f"{p}.stages.block_s{ratio}.{i}", cin if i == 0 else width, width, 2 if i == 0 else 1)
        cin = width
    return out


def sg_stdc_seg(variant: str, num_classes: int = 19, aux: bool = True) -> Layout:
    """STDC_SEG_DEFAULT_ARGS: context_fuse_channels 128, ffm_channels 256, aux/detail head channels 64."""
    out = sg_stdc_backbone("cp.backbone", variant) + cbr("cp.context_embedding.context_embedding.1", 1024, 128, 1)
    for ratio, channels in ((32, 1024), (16, 512)):
        out += cbr(f"cp.arm{ratio}.conv_first", channels, 128, 3) + cbr(f"cp.arm{ratio}.attention_block.1", 128, 128, 1)
        out += cbr(f"cp.upsample{ratio}.1", 128, 128, 3)
    out += cbr("ffm.pw_conv", 256 + 128, 256, 1)
    out += [("ffm.attention_block.1.seq.conv.weight", (64, 256, 1, 1)),
            ("ffm.attention_block.2.weight", (256, 64, 1, 1))]
    out += seg_head("segmentation_head", 256, 256, num_classes)
    if aux:
        out += seg_head("aux_head_s16", 512, 64, num_classes) + seg_head("aux_head_s32", 1024, 64, num_classes)
        out += seg_head("detail_head8", 256, 64, 1)
    return out


# ---- DDRNet: BasicDDRBackBone + DDRNet, layers [2, 2, 2, 2, 1, 2, 2, 1] -----------------------------------------

SG_DDRNET = {"ddrnet_23": (64, 128, 128), "ddrnet_23_slim": (32, 64, 64)}  # planes, highres_planes, head_planes


def conv_bn(p: str, cin: int, cout: int, k: int, bias: bool = False) -> Layout:
    """ddrnet.py ConvBN: Sequential(0 Conv2d, 1 BatchNorm2d)."""
    return [(f"{p}.0.weight", (cout, cin, k, k)), *([(f"{p}.0.bias", (cout,))] if bias else []), *bn(f"{p}.1", cout)]


def resnet_block(p: str, cin: int, planes: int, stride: int, expansion: int) -> Layout:
    """BasicResNetBlock (expansion 1: conv1, conv2) or Bottleneck (conv1 1x1, conv2 3x3, conv3 1x1 x expansion)."""
    if expansion == 1:
        out = [(f"{p}.conv1.weight", (planes, cin, 3, 3)), *bn(f"{p}.bn1", planes),
               (f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes)]
    else:
        out = [(f"{p}.conv1.weight", (planes, cin, 1, 1)), *bn(f"{p}.bn1", planes),
               (f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes),
               (f"{p}.conv3.weight", (planes * expansion, planes, 1, 1)), *bn(f"{p}.bn3", planes * expansion)]
    if stride != 1 or cin != planes * expansion:
        out += [(f"{p}.shortcut.0.weight", (planes * expansion, cin, 1, 1)), *bn(f"{p}.shortcut.1", planes * expansion)]
    return out


def make_layer(p: str, cin: int, planes: int, n: int, stride: int = 1, expansion: int = 1) -> Layout:
    out = resnet_block(f"{p}.0", cin, planes, stride, expansion)
    return out + [item for i in range(1, n) for item in resnet_block(f"{p}.{i}", planes * expansion, planes, 1,
                                                                      expansion)]


def segment_head(p: str, cin: int, mid: int, num_classes: int) -> Layout:
    return [*bn(f"{p}.bn1", cin), (f"{p}.conv1.weight", (mid, cin, 3, 3)), *bn(f"{p}.bn2", mid),
            (f"{p}.conv2.weight", (num_classes, mid, 1, 1)), (f"{p}.conv2.bias", (num_classes,))]


def sg_ddrnet(name: str, num_classes: int = 19, aux: bool = True, spp: int = 128) -> Layout:
    p, high, head = SG_DDRNET[name]
    out = conv_bn("_backbone.stem.0", 3, p, 3, bias=True) + conv_bn("_backbone.stem.1", p, p, 3, bias=True)
    out += make_layer("_backbone.layer1", p, p, 2) + make_layer("_backbone.layer2", p, 2 * p, 2, 2)
    out += make_layer("_backbone.layer3.0", 2 * p, 4 * p, 2, 2) + make_layer("_backbone.layer4", 4 * p, 8 * p, 2, 2)
    out += conv_bn("compression3.0", 4 * p, high, 1) + conv_bn("down3.0", high, 4 * p, 3)
    out += make_layer("layer3_skip.0", 2 * p, high, 2)
    out += conv_bn("compression4", 8 * p, high, 1) + conv_bn("down4.0", high, 2 * high, 3)
    out += conv_bn("down4.1", 2 * high, 8 * p, 3) + make_layer("layer4_skip", high, high, 2)
    out += make_layer("layer5_skip", high, high, 1, expansion=2) + make_layer("layer5", 8 * p, 8 * p, 1, 2, 2)
    # DAPPM over layer5's 16p channels, spp_kernel_sizes [1, 5, 9, 17, 0]: branch 0 without pooling, no process.
    out += [*bn("spp.branches.0.down_scale.0", 16 * p), ("spp.branches.0.down_scale.2.weight", (spp, 16 * p, 1, 1))]
    for i in range(1, 5):
        b = f"spp.branches.{i}"
        out += [*bn(f"{b}.down_scale.1", 16 * p), (f"{b}.down_scale.3.weight", (spp, 16 * p, 1, 1)),
                *bn(f"{b}.process.0", spp), (f"{b}.process.2.weight", (spp, spp, 3, 3))]
    out += [*bn("spp.compression.0", 5 * spp), ("spp.compression.2.weight", (2 * high, 5 * spp, 1, 1)),
            *bn("spp.shortcut.0", 16 * p), ("spp.shortcut.2.weight", (2 * high, 16 * p, 1, 1))]
    out += segment_head("final_layer", 2 * high, head, num_classes)
    return out + (segment_head("seghead_extra", high, head, num_classes) if aux else [])


# ---- PP-LiteSeg: PPLiteSegT / PPLiteSegB -------------------------------------------------------------------------

# backbone, projection_channels_list, decoder_channels (deepest first), head_mid_channels.
SG_PP_LITE = {"pp_lite_t_seg50": ("stdc1", (64, 128, 128), (128, 64, 32), 32),
              "pp_lite_b_seg50": ("stdc2", (96, 128, 128), (128, 96, 64), 64)}


def sg_pp_lite(name: str, num_classes: int = 19, aux: bool = True) -> Layout:
    variant, proj, decoder, head_mid = SG_PP_LITE[name]
    out = sg_stdc_backbone("encoder.backbone", variant)
    for i in range(3):  # SPPM pool sizes [1, 2, 4], inter and out channels 128
        out += cbr(f"encoder.context_module.branches.{i}.1", 1024, 128, 1)
    out += cbr("encoder.context_module.conv_out", 128, 128, 3)
    out += [item for i, (c, q) in enumerate(zip((256, 512, 1024), proj, strict=True))
            for item in cbr(f"encoder.proj_convs.{i}", c, q, 3)]
    cin = 128  # the decoder starts from the SPPM output; every skip is already projected to cin (proj_skip Identity)
    for j, (skip, channels) in enumerate(zip(reversed(proj), decoder, strict=True)):
        assert skip == cin
        p = f"decoder.up_stages.{j}"
        out += cbr(f"{p}.conv_atten.0", 4, 2, 3) + cbr(f"{p}.conv_atten.1", 2, 1, 3)
        out += cbr(f"{p}.conv_out", cin, channels, 3)
        cin = channels
    out += seg_head("seg_head", decoder[-1], head_mid, num_classes)
    if aux:  # aux_hidden_channels [32, 64, 64] over the projected encoder features
        out += [item for i, (c, h) in enumerate(zip(proj, (32, 64, 64), strict=True))
                for item in seg_head(f"aux_heads.{i}", c, h, num_classes)]
    return out


# ---- helpers ----------------------------------------------------------------------------------------------------

def fill(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Distinct random values per tensor (BN counters: distinct integers); names must be unique."""
    assert len({name for name, _ in layout}) == len(layout), "duplicate SG names in the layout"
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.tensor(1000 * seed + i) if name.endswith("num_batches_tracked")
                   else torch.rand(shape, generator=generator) + 0.5) for i, (name, shape) in enumerate(layout)}


def plausible(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """Trained-looking values: He-scaled convolutions, BatchNorms near identity (keeps a forward pass finite)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout:
        noise = torch.rand(shape, generator=generator) if shape else torch.tensor(0.0)
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(100)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[name] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        elif name.endswith(("running_var", ".weight")):
            out[name] = 0.75 + 0.5 * noise
        else:  # BN bias, running_mean, conv bias
            out[name] = 0.2 * (noise - 0.5)
    return out


def save(tmp_path: Path, name: str, sg: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / f"{name}_sg.pth"
    torch.save({"net": sg, "packages": {}, "epoch": 1}, path)  # what SG 3.7 writes (less its optimizer state)
    return path


def landed(model: nn.Module, sg: dict[str, torch.Tensor], elsewhere: Iterable[str] = ()) -> dict[str, str]:
    """SG name -> the model key holding exactly its values; each SG tensor lands once, and every key of ours is
    filled by one of them or is in ``elsewhere`` (checked by the caller)."""
    own = model.state_dict()
    by_print: dict[tuple, list[str]] = {}
    for key, value in own.items():
        by_print.setdefault((tuple(value.shape), value.flatten()[0].item() if value.numel() else 0), []).append(key)
    where = {}
    for name, tensor in sg.items():
        candidates = by_print.get((tuple(tensor.shape), tensor.flatten()[0].item()), [])
        hits = [k for k in candidates if torch.equal(own[k], tensor)]
        assert len(hits) == 1, f"SG {name} landed in {hits}"
        where[name] = hits[0]
    assert sorted([*where.values(), *elsewhere]) == sorted(own), "not every tensor of ours was filled from the SG file"
    return where


def sg_report(model: nn.Module, left_out: list[str]) -> sg_checkpoints.SgLoadReport:
    """The SG load report: nothing untranslated, nothing missing or unexpected, exactly ``left_out`` left out."""
    report = getattr(model, SG_REPORT_ATTRIBUTE)
    assert report.untranslated == [] and report.dropped == []
    assert not report.load.missing and not report.load.unexpected and not report.load.mismatched
    assert sorted(report.load.left_out) == sorted(f"{SG_ONLY}.{k}" for k in left_out)
    return report


def sg_cbr(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, relu: bool = True, **conv: int) -> torch.Tensor:
    """SG's ConvBNReLU ``p`` in eval mode, from SG's own tensors."""
    y = F.conv2d(x, sd[f"{p}.seq.conv.weight"], **conv)
    y = F.batch_norm(y, sd[f"{p}.seq.bn.running_mean"], sd[f"{p}.seq.bn.running_var"], sd[f"{p}.seq.bn.weight"],
                     sd[f"{p}.seq.bn.bias"], False, 0.0, 1e-5)
    return F.relu(y) if relu else y


# ---- tests ------------------------------------------------------------------------------------------------------

def test_stdc1_seg_from_sg_with_aux_heads(tmp_path: Path) -> None:
    sg = fill(sg_stdc_seg("stdc1"), seed=31)
    path = save(tmp_path, "stdc1", sg)
    # Our aux8/aux16 (on the context path, as the official STDC-Seg) have no counterpart in SG's file: strict fails.
    with pytest.raises(RecipeError, match=r"heads\.aux8.*not in the checkpoint"):
        models.get("stdc1_seg50", num_classes=19, checkpoint_path=path, use_aux_heads=True)
    model = models.get("stdc1_seg50", num_classes=19, checkpoint_path=path, use_aux_heads=True, strict_load="off")
    report = getattr(model, SG_REPORT_ATTRIBUTE)
    theirs = [k for k in sg if k.startswith(("aux_head_s16.", "aux_head_s32."))]
    assert sorted(report.load.left_out) == sorted(f"{SG_ONLY}.{k}" for k in theirs) and report.untranslated == []
    ours = {k for k in model.state_dict() if k.startswith(("heads.aux8.", "heads.aux16."))}
    assert set(report.load.missing) == ours
    where = landed(model, {k: v for k, v in sg.items() if k not in theirs}, elsewhere=ours)
    b = "cp.backbone.stages"
    assert where[f"{b}.block_s2.0.seq.conv.weight"] == "backbone.stem2.conv.weight"
    assert where[f"{b}.block_s4.0.seq.bn.running_var"] == "backbone.stem4.bn.running_var"
    assert where[f"{b}.block_s8.0.conv_list.1.0.seq.conv.weight"] == "backbone.stage8.0.downsample.0.weight"
    assert where[f"{b}.block_s16.0.conv_list.1.0.seq.bn.bias"] == "backbone.stage16.0.downsample.1.bias"
    assert where[f"{b}.block_s32.0.conv_list.1.1.seq.conv.weight"] == "backbone.stage32.0.convs.1.conv.weight"
    assert where[f"{b}.block_s32.1.conv_list.1.seq.conv.weight"] == "backbone.stage32.1.convs.1.conv.weight"
    assert where[f"{b}.block_s8.1.conv_list.3.seq.bn.num_batches_tracked"] == \
        "backbone.stage8.1.convs.3.bn.num_batches_tracked"
    assert where["cp.context_embedding.context_embedding.1.seq.conv.weight"] == "context.conv_global.conv.weight"
    assert where["cp.arm32.attention_block.1.seq.bn.weight"] == "context.arm32.attention.bn.weight"
    assert where["cp.upsample16.1.seq.conv.weight"] == "context.conv_head16.conv.weight"
    assert where["ffm.attention_block.1.seq.conv.weight"] == "ffm.attention.0.weight"
    assert where["ffm.attention_block.2.weight"] == "ffm.attention.2.weight"
    assert where["segmentation_head.0.seg_head.0.seq.bn.running_mean"] == "heads.main.conv.bn.running_mean"
    assert where["segmentation_head.0.seg_head.2.weight"] == "heads.main.classifier.weight"
    assert where["detail_head8.0.seg_head.2.weight"] == "heads.detail.classifier.weight"


def test_stdc2_seg_from_sg_without_aux_heads(tmp_path: Path) -> None:
    # Our default build has no aux/detail heads: SG's three are left out, everything else lands.
    sg = fill(sg_stdc_seg("stdc2"), seed=32)
    model = models.get("stdc2_seg75", num_classes=19, checkpoint_path=save(tmp_path, "stdc2", sg))
    aux = [k for k in sg if k.startswith(("aux_head_s16.", "aux_head_s32.", "detail_head8."))]
    sg_report(model, aux)
    where = landed(model, {k: v for k, v in sg.items() if k not in aux})
    assert where["cp.backbone.stages.block_s16.4.conv_list.2.seq.conv.weight"] == \
        "backbone.stage16.4.convs.2.conv.weight"


def test_ddrnet_23_slim_from_sg_stem_bias_folded(tmp_path: Path) -> None:
    sg = fill(sg_ddrnet("ddrnet_23_slim"), seed=33)
    model = models.get("ddrnet_23_slim", num_classes=19, checkpoint_path=save(tmp_path, "ddrnet", sg),
                       use_aux_heads=True)
    report = sg_report(model, [])
    folded = {f"_backbone.stem.{i}.{part}" for i in (0, 1) for part in ("0.bias", "1.running_mean")}
    assert set(report.converted) == folded
    own = model.state_dict()
    for i in (0, 1):
        assert torch.equal(own[f"backbone.stem.{i}.bn.running_mean"],
                           sg[f"_backbone.stem.{i}.1.running_mean"] - sg[f"_backbone.stem.{i}.0.bias"])
    where = landed(model, {k: v for k, v in sg.items() if k not in folded},
                   elsewhere={"backbone.stem.0.bn.running_mean", "backbone.stem.1.bn.running_mean"})
    assert where["_backbone.stem.1.0.weight"] == "backbone.stem.1.conv.weight"
    assert where["_backbone.layer2.0.shortcut.0.weight"] == "backbone.layer2.0.shortcut.conv.weight"
    assert where["_backbone.layer3.0.1.bn2.running_var"] == "backbone.layer3.1.body.1.bn.running_var"
    assert where["compression3.0.1.weight"] == "backbone.compression3.bn.weight"
    assert where["down4.1.0.weight"] == "backbone.down4.1.conv.weight"
    assert where["layer3_skip.0.1.conv1.weight"] == "backbone.layer3_high.1.body.0.conv.weight"
    assert where["layer5_skip.0.conv3.weight"] == "backbone.layer5_high.0.body.2.conv.weight"
    assert where["layer5.0.shortcut.1.bias"] == "backbone.layer5.0.shortcut.bn.bias"
    assert where["spp.branches.0.down_scale.2.weight"] == "spp.scale0.2.weight"
    assert where["spp.branches.4.down_scale.1.running_mean"] == "spp.scales.3.1.running_mean"
    assert where["spp.branches.2.process.2.weight"] == "spp.process.1.2.weight"
    assert where["final_layer.bn1.weight"] == "heads.main.conv.0.weight"
    assert where["final_layer.conv2.bias"] == "heads.main.classifier.2.bias"
    assert where["seghead_extra.bn2.running_var"] == "heads.aux.classifier.0.running_var"


def test_pp_lite_t_from_sg_uafm_attention_rewritten(tmp_path: Path) -> None:
    sg = fill(sg_pp_lite("pp_lite_t_seg50"), seed=34)
    model = models.get("pp_lite_t_seg50", num_classes=19, checkpoint_path=save(tmp_path, "pp_lite", sg))
    aux = [k for k in sg if k.startswith("aux_heads.")]
    report = sg_report(model, aux)
    own = model.state_dict()
    rewritten = set()
    for j in range(3):  # SG's up_stages run deepest first, our decoder levels shallowest first
        sg_p, ours = f"decoder.up_stages.{j}.conv_atten", f"decoder.{2 - j}.attention"
        weight = sg[f"{sg_p}.0.seq.conv.weight"]
        assert torch.equal(own[f"{ours}.0.conv.weight"], torch.cat((weight[:, 2:], weight[:, :2]), dim=1))
        for leaf in ("weight", "bias"):
            assert torch.equal(own[f"{ours}.1.bn.{leaf}"], -sg[f"{sg_p}.1.seq.bn.{leaf}"])
        rewritten |= {f"{ours}.0.conv.weight", f"{ours}.1.bn.weight", f"{ours}.1.bn.bias"}
    assert len(report.converted) == 9
    where = landed(model, {k: v for k, v in sg.items() if k not in aux and k not in report.converted},
                   elsewhere=rewritten)
    assert where["encoder.backbone.stages.block_s8.0.conv_list.0.seq.conv.weight"] == \
        "backbone.stage8.0.convs.0.conv.weight"
    assert where["encoder.context_module.branches.2.1.seq.conv.weight"] == "sppm.stages.2.conv.weight"
    assert where["encoder.context_module.conv_out.seq.bn.bias"] == "sppm.conv_out.bn.bias"
    assert where["encoder.proj_convs.0.seq.conv.weight"] == "decoder.0.conv_low.conv.weight"
    assert where["encoder.proj_convs.2.seq.bn.running_var"] == "decoder.2.conv_low.bn.running_var"
    assert where["decoder.up_stages.0.conv_out.seq.conv.weight"] == "decoder.2.conv_out.conv.weight"
    assert where["decoder.up_stages.2.conv_atten.1.seq.conv.weight"] == "decoder.0.attention.1.conv.weight"
    assert where["decoder.up_stages.1.conv_atten.0.seq.bn.running_mean"] == "decoder.1.attention.0.bn.running_mean"
    assert where["seg_head.0.seg_head.0.seq.conv.weight"] == "heads.main.conv.conv.weight"
    assert where["seg_head.0.seg_head.2.weight"] == "heads.main.classifier.weight"


def test_converted_values_compute_what_sg_computes(tmp_path: Path) -> None:
    # DDRNet's stem: SG's conv with bias, then BN, ReLU (eval and training mode).
    sg = plausible(sg_ddrnet("ddrnet_23_slim", aux=False), seed=35)
    model = models.get("ddrnet_23_slim", num_classes=19, checkpoint_path=save(tmp_path, "ddrnet", sg))
    x = torch.randn(2, 3, 32, 48)
    for training in (False, True):
        stem = model.backbone.stem[0].train(training)
        with torch.no_grad():
            y = F.conv2d(x, sg["_backbone.stem.0.0.weight"], sg["_backbone.stem.0.0.bias"], stride=2, padding=1)
            y = F.relu(F.batch_norm(y, sg["_backbone.stem.0.1.running_mean"].clone(),
                                    sg["_backbone.stem.0.1.running_var"].clone(), sg["_backbone.stem.0.1.weight"],
                                    sg["_backbone.stem.0.1.bias"], training, 0.0, 1e-5))
            torch.testing.assert_close(stem(x), y, rtol=1e-4, atol=1e-5)

    # PP-LiteSeg's UAFM (ppliteseg.py UAFM.forward): x the upsampled deeper map, skip the projected encoder map,
    # out = conv_out(x * a + skip * (1 - a)), a = sigmoid(conv_atten([mean x, max x, mean skip, max skip])).
    sg = plausible(sg_pp_lite("pp_lite_t_seg50", aux=False), seed=36)
    model = models.get("pp_lite_t_seg50", num_classes=19, checkpoint_path=save(tmp_path, "pp_lite", sg)).eval()
    low, high = torch.randn(2, 512, 8, 12), torch.randn(2, 128, 4, 6)  # 1/16 backbone map, 1/32 decoder output
    p = "decoder.up_stages.1"
    with torch.no_grad():
        skip = sg_cbr(sg, "encoder.proj_convs.1", low, padding=1)
        up = F.interpolate(high, scale_factor=2, mode="bilinear", align_corners=False)
        stats = torch.cat([up.mean(1, keepdim=True), up.amax(1, keepdim=True), skip.mean(1, keepdim=True),
                           skip.amax(1, keepdim=True)], dim=1)
        atten = torch.sigmoid(sg_cbr(sg, f"{p}.conv_atten.1", sg_cbr(sg, f"{p}.conv_atten.0", stats, padding=1),
                                     relu=False, padding=1))
        expected = sg_cbr(sg, f"{p}.conv_out", up * atten + skip * (1 - atten), padding=1)
        torch.testing.assert_close(model.decoder[1](low, high), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["stdc1_seg50", "ddrnet_23_slim", "pp_lite_t_seg50"])
def test_a_loaded_model_predicts(tmp_path: Path, name: str) -> None:
    layout = {"stdc1_seg50": lambda: sg_stdc_seg("stdc1", 5), "ddrnet_23_slim": lambda: sg_ddrnet(name, 5),
              "pp_lite_t_seg50": lambda: sg_pp_lite(name, 5)}[name]()
    model = models.get(name, num_classes=5, checkpoint_path=save(tmp_path, name, plausible(layout, seed=37)))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 128))
    assert out.shape == (1, 5, 64, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "layout", "ours"), [
    ("ddrnet_23_slim", lambda: sg_stdc_seg("stdc1"), "DDRNet"),
    ("pp_lite_t_seg50", lambda: sg_stdc_seg("stdc1"), "PPLiteSeg"),  # the same backbone under another root
    ("stdc1_seg50", lambda: sg_pp_lite("pp_lite_t_seg50"), "STDCSeg"),
])
def test_an_sg_file_of_another_family_is_refused(tmp_path: Path, name: str, layout, ours: str) -> None:
    sg = {k: torch.zeros(shape) for k, shape in layout()}
    with pytest.raises(RecipeError, match=rf"does not fit {ours} after translating its names with the {ours} rules"):
        models.get(name, num_classes=19, checkpoint_path=save(tmp_path, name, sg))


def test_every_size_translates() -> None:
    # The sizes not loaded above: SG's names and shapes become exactly ours (meta device, no values).
    for name, layout in (("stdc2_seg50", sg_stdc_seg("stdc2", aux=False)), ("ddrnet_23", sg_ddrnet("ddrnet_23")),
                         ("pp_lite_b_seg75", sg_pp_lite("pp_lite_b_seg50", aux=False))):
        with torch.device("meta"):
            model = models.get(name, num_classes=19, use_aux_heads=name == "ddrnet_23")
        ours = {model.super_gradients_key(k): shape for k, shape in layout}
        if hasattr(model, "super_gradients_convert"):
            meta = {k: torch.empty(shape, device="meta") for k, shape in ours.items()}
            model.super_gradients_convert(meta)
            ours = {k: tuple(v.shape) for k, v in meta.items()}
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == own, name
