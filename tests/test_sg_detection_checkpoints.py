"""Loading SuperGradients (SG) checkpoints of YOLO-NAS, PP-YOLOE and SSD-Lite MobileNetV2 into our detectors.

The SG state dicts are written here by hand from SG 3.7's constructors (github.com/Deci-AI/super-gradients,
``src/super_gradients``): ``modules/qarepvgg_block.py``, ``repvgg_block.py``, ``conv_bn_act_block.py``,
``detection_modules.py``, ``multi_output_modules.py``; ``training/models/detection_models/yolo_nas/``,
``pp_yolo_e/``, ``csp_resnet.py``, ``csp_darknet53.py`` (SPP), ``ssd.py``; ``classification_models/mobilenetv2.py``;
sizes from ``recipes/arch_params/{yolo_nas_*,ppyoloe*,ssd_lite_mobilenetv2}_arch_params.yaml``. Every tensor gets
distinct random values, so "landed where SG's name says" is checked by value, never through our own mapping.

SG tensors ours recomputes (QARepVGG's unused ``rbr_reparam`` placeholders, SSDHead's stored default boxes) are
what the hooks answer None for; the loader drops them and lists them in its report, which the tests check.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from super_recipes import models
from super_recipes.detection.ssd.model import SG_SSD_LITE_ARCH
from super_recipes.detection.yolo_nas.blocks import QARepVGGBlock
from super_recipes.errors import RecipeError
from super_recipes.models import sg_checkpoints
from super_recipes.models.sg_checkpoints import SG_REPORT_ATTRIBUTE, translate_sg_state_dict

Layout = list[tuple[str, tuple[int, ...]]]


def bn(prefix: str, channels: int) -> Layout:
    return [(f"{prefix}.{n}", (channels,)) for n in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{prefix}.num_batches_tracked", ())]


def conv_bn(prefix: str, cin: int, cout: int, k: int, seq: bool = False, groups: int = 1) -> Layout:
    """SG ``Conv`` (``conv``, ``bn``) or, with ``seq``, ``ConvBNAct`` / ``ConvBNReLU`` (``seq.conv``, ``seq.bn``);
    no conv bias in either as these models build them."""
    p = f"{prefix}.seq" if seq else prefix
    return [(f"{p}.conv.weight", (cout, cin // groups, k, k)), *bn(f"{p}.bn", cout)]


# ---- YOLO-NAS: yolo_stages.py, panneck.py, dfl_heads.py, NStageBackbone, SPP, QARepVGGBlock ----------------------

# (stages: out, blocks, hidden, concat), (neck1-4: out, blocks, hidden), head width_mult: the arch_params YAMLs.
SG_YOLO_NAS = {
    "yolo_nas_s": ([(96, 2, 32, False), (192, 3, 64, False), (384, 5, 96, False), (768, 2, 192, False)],
                   [(192, 2, 64), (96, 2, 48), (192, 2, 64), (384, 2, 64)], 0.5),
    "yolo_nas_m": ([(96, 2, 64, True), (192, 3, 128, True), (384, 5, 256, True), (768, 2, 384, False)],
                   [(192, 2, 192), (96, 3, 64), (192, 2, 192), (384, 3, 256)], 0.75),
    "yolo_nas_l": ([(96, 2, 96, True), (192, 3, 128, True), (384, 5, 256, True), (768, 2, 512, True)],
                   [(192, 4, 128), (96, 4, 128), (192, 4, 128), (384, 4, 256)], 1.0),
}


def qarepvgg(p: str, cin: int, cout: int) -> Layout:
    """QARepVGGBlock (use_alpha off, as YOLO-NAS builds it): 3x3 conv + BN, biased 1x1, post_bn and the
    ``rbr_reparam`` placeholder it registers before fusing (``id_tensor`` is not persistent)."""
    return [(f"{p}.branch_3x3.conv.weight", (cout, cin, 3, 3)), *bn(f"{p}.branch_3x3.bn", cout),
            (f"{p}.branch_1x1.weight", (cout, cin, 1, 1)), (f"{p}.branch_1x1.bias", (cout,)), *bn(f"{p}.post_bn", cout),
            (f"{p}.rbr_reparam.weight", (cout, cin, 3, 3)), (f"{p}.rbr_reparam.bias", (cout,))]


def yolo_nas_csp(p: str, cin: int, cout: int, n: int, hidden: int, concat: bool, qa: bool) -> Layout:
    """YoloNASCSPLayer: conv1, conv2, conv3, bottlenecks (alpha, cv1, cv2: QARepVGG or a 3x3 Conv)."""
    out = conv_bn(f"{p}.conv1", cin, hidden, 1) + conv_bn(f"{p}.conv2", cin, hidden, 1) + \
        conv_bn(f"{p}.conv3", hidden * (2 + (n if concat else 0)), cout, 1)
    for i in range(n):
        b = f"{p}.bottlenecks.{i}"
        out += [(f"{b}.alpha", (1,))]
        for cv in ("cv1", "cv2"):
            out += qarepvgg(f"{b}.{cv}", hidden, hidden) if qa else conv_bn(f"{b}.{cv}", hidden, hidden, 3)
    return out


def sg_yolo_nas(name: str, num_classes: int = 80) -> Layout:
    stages, necks, head_width = SG_YOLO_NAS[name]
    out, cin, widths = qarepvgg("backbone.stem.conv", 3, 48), 48, []
    for i, (c, n, hidden, concat) in enumerate(stages, start=1):
        out += qarepvgg(f"backbone.stage{i}.downsample", cin, c)
        out += yolo_nas_csp(f"backbone.stage{i}.blocks", c, c, n, hidden, concat, True)
        cin = c
        widths.append(c)
    out += conv_bn("backbone.context_module.cv1", 768, 384, 1) + conv_bn("backbone.context_module.cv2", 4 * 384, 768, 1)
    c2, c3, c4, c5 = widths[0], widths[1], widths[2], 768
    for k, (x, skip1, skip2) in enumerate(((c5, c4, c3), (necks[0][0], c3, c2)), start=1):  # YoloNASUpStage
        c, n, hidden = necks[k - 1]
        p = f"neck.neck{k}"
        out += conv_bn(f"{p}.reduce_skip1", skip1, c, 1) + conv_bn(f"{p}.reduce_skip2", skip2, c, 1)
        out += conv_bn(f"{p}.conv", x, c, 1) + [(f"{p}.upsample.weight", (c, c, 2, 2)), (f"{p}.upsample.bias", (c,))]
        out += conv_bn(f"{p}.downsample", c, c, 3) + conv_bn(f"{p}.reduce_after_concat", 3 * c, c, 1)
        out += yolo_nas_csp(f"{p}.blocks", c, c, n, hidden, False, True)
    for k, (x, skip) in ((3, (necks[1][0], necks[1][0])), (4, (necks[2][0], necks[0][0]))):  # YoloNASDownStage
        c, n, hidden = necks[k - 1]
        out += conv_bn(f"neck.neck{k}.conv", x, c // 2, 3)
        out += yolo_nas_csp(f"neck.neck{k}.blocks", c // 2 + skip, c, n, hidden, False, False)
    for i, (cin, inter) in enumerate(zip((necks[1][0], necks[2][0], necks[3][0]), (128, 256, 512), strict=True)):
        p, inter = f"heads.head{i + 1}", math.ceil(int(inter * head_width) / 8) * 8
        out += conv_bn(f"{p}.stem", cin, inter, 1, seq=True)
        out += conv_bn(f"{p}.cls_convs.0", inter, inter, 3, seq=True) + conv_bn(f"{p}.reg_convs.0", inter, inter, 3,
                                                                                  seq=True)
        out += [(f"{p}.cls_pred.weight", (num_classes, inter, 1, 1)), (f"{p}.cls_pred.bias", (num_classes,)),
                (f"{p}.reg_pred.weight", (68, inter, 1, 1)), (f"{p}.reg_pred.bias", (68,))]
    return out


# ---- PP-YOLOE: csp_resnet.py, pp_yolo_e/pan.py, pp_yolo_head.py, RepVGGBlock, EffectiveSEBlock -------------------

SG_PPYOLOE = {"ppyoloe_s": (0.33, 0.50), "ppyoloe_m": (0.67, 0.75), "ppyoloe_l": (1.0, 1.0), "ppyoloe_x": (1.33, 1.25)}


def basic_block(p: str, c: int) -> Layout:
    """CSPResNetBasicBlock: conv1 ConvBNAct 3x3, conv2 RepVGGBlock (branch_3x3 / branch_1x1 = Sequential(conv, bn);
    no identity branch: use_residual_connection=False; use_alpha off in the published arch_params)."""
    return conv_bn(f"{p}.conv1", c, c, 3, seq=True) + [
        (f"{p}.conv2.branch_3x3.conv.weight", (c, c, 3, 3)), *bn(f"{p}.conv2.branch_3x3.bn", c),
        (f"{p}.conv2.branch_1x1.conv.weight", (c, c, 1, 1)), *bn(f"{p}.conv2.branch_1x1.bn", c)]


def pan_csp(p: str, cin: int, cout: int, n: int, spp: bool) -> Layout:
    """pan.py CSPStage: conv1, conv2, convs ("0".."n-1", "spp" after (n - 1) // 2), conv3."""
    mid = cout // 2
    out = conv_bn(f"{p}.conv1", cin, mid, 1, seq=True) + conv_bn(f"{p}.conv2", cin, mid, 1, seq=True)
    for i in range(n):
        out += basic_block(f"{p}.convs.{i}", mid)
        if spp and i == (n - 1) // 2:
            out += conv_bn(f"{p}.convs.spp.conv", 4 * mid, mid, 1, seq=True)
    return out + conv_bn(f"{p}.conv3", 2 * mid, cout, 1, seq=True)


def sg_ppyoloe(name: str, num_classes: int = 80) -> Layout:
    depth, width = SG_PPYOLOE[name]
    ch = [max(round(c * width), 1) for c in (64, 128, 256, 512, 1024)]
    layers = [max(round(n * depth), 1) for n in (3, 6, 6, 3)]
    out = conv_bn("backbone.stem.conv1", 3, ch[0] // 2, 3, seq=True) + \
        conv_bn("backbone.stem.conv2", ch[0] // 2, ch[0] // 2, 3, seq=True) + \
        conv_bn("backbone.stem.conv3", ch[0] // 2, ch[0], 3, seq=True)
    for i in range(4):  # CSPResStage
        p, half = f"backbone.stages.{i}", (ch[i] + ch[i + 1]) // 2 // 2
        out += conv_bn(f"{p}.conv_down", ch[i], 2 * half, 3, seq=True)
        out += conv_bn(f"{p}.conv1", 2 * half, half, 1, seq=True) + conv_bn(f"{p}.conv2", 2 * half, half, 1, seq=True)
        out += [item for j in range(layers[i]) for item in basic_block(f"{p}.blocks.{j}", half)]
        out += [(f"{p}.attn.project.weight", (2 * half, 2 * half, 1, 1)), (f"{p}.attn.project.bias", (2 * half,))]
        out += conv_bn(f"{p}.conv3", 2 * half, ch[i + 1], 1, seq=True)
    # PPYoloECSPPAN: in_channels [256, 512, 1024] taken deepest first, out_channels [768, 384, 192] (deepest first).
    ins = [max(round(c * width), 1) for c in (1024, 512, 256)]
    outs = [max(round(c * width), 1) for c in (768, 384, 192)]
    n, pre = max(round(3 * depth), 1), 0
    for i, (cin, cout) in enumerate(zip(ins, outs, strict=True)):
        out += pan_csp(f"neck.fpn_stages.{i}.0", cin + pre // 2, cout, n, spp=i == 0)
        if i < 2:
            out += conv_bn(f"neck.fpn_routes.{i}", cout, cout // 2, 1, seq=True)
        pre = cout
    for i in range(2):  # pan_routes[i] / pan_stages[i] produce outs[i] from outs[i + 1]
        out += conv_bn(f"neck.pan_routes.{i}", outs[i + 1], outs[i + 1], 3, seq=True)
        out += pan_csp(f"neck.pan_stages.{i}.0", outs[i] + outs[i + 1], outs[i], n, spp=False)
    for kind in ("stem_cls", "stem_reg"):  # PPYOLEHead over in_channels [768, 384, 192] x width
        for i, c in enumerate(outs):
            out += [(f"head.{kind}.{i}.fc.weight", (c, c, 1, 1)), (f"head.{kind}.{i}.fc.bias", (c,))]
            out += conv_bn(f"head.{kind}.{i}.conv", c, c, 1, seq=True)
    for kind, channels in (("pred_cls", num_classes), ("pred_reg", 68)):
        out += [item for i, c in enumerate(outs) for item in ((f"head.{kind}.{i}.weight", (channels, c, 3, 3)),
                                                               (f"head.{kind}.{i}.bias", (channels,)))]
    return out


# ---- SSD-Lite MobileNetV2: ssd.py, detection_modules.py (MobileNetV2Backbone, SSDInvertedResidualNeck, SSDHead) --

def inverted_residual(p: str, inp: int, oup: int, ratio: float) -> Layout:
    """SG mobilenetv2.InvertedResidual: one flat ``conv`` Sequential."""
    hidden = int(inp * ratio)
    if ratio == 1:
        return [(f"{p}.conv.0.weight", (hidden, 1, 3, 3)), *bn(f"{p}.conv.1", hidden),
                (f"{p}.conv.3.weight", (oup, hidden, 1, 1)), *bn(f"{p}.conv.4", oup)]
    return [(f"{p}.conv.0.weight", (hidden, inp, 1, 1)), *bn(f"{p}.conv.1", hidden),
            (f"{p}.conv.3.weight", (hidden, 1, 3, 3)), *bn(f"{p}.conv.4", hidden),
            (f"{p}.conv.6.weight", (oup, hidden, 1, 1)), *bn(f"{p}.conv.7", oup)]


def sg_ssd_lite(num_classes: int = 80) -> Layout:
    f = "backbone.multi_output_backbone.0.features"  # MultiOutputModule keeps MobileNetV2 as child "0"
    out: Layout = [(f"{f}.0.0.weight", (32, 3, 3, 3)), *bn(f"{f}.0.1", 32)]
    index, inp = 1, 32
    for t, c, n in ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)):
        for _ in range(n):
            out += inverted_residual(f"{f}.{index}", inp, c, t)
            index, inp = index + 1, c
    out += [(f"{f}.18.0.weight", (1280, inp, 1, 1)), *bn(f"{f}.18.1", 1280)]
    inp = 1280  # SSDNeck chains its blocks on the backbone's last map
    for i, (c, ratio) in enumerate(zip((512, 256, 256, 64), (0.2, 0.25, 0.5, 0.25), strict=True)):
        out += inverted_residual(f"neck.neck_blocks.{i}", inp, c, ratio)
        inp = c
    # SSDHead: frozen default boxes (6 per cell on 20, 10, 5, 3, 2, 1 grids: 3234), then loc / conf predictors on
    # block 14's expansion (576), the 1280 map and the neck's four; SeperableConv2d except on the last level.
    out += [("heads.dboxes_xy", (3234, 2)), ("heads.dboxes_wh", (3234, 2)), ("heads.scales", (4,)),
            ("heads.img_size", (1,))]
    for kind, per_box in (("loc", 4), ("conf", num_classes + 1)):
        for i, c in enumerate((576, 1280, 512, 256, 256, 64)):
            p, o = f"heads.{kind}.{i}", 6 * per_box
            out += [(f"{p}.weight", (o, c, 3, 3)), (f"{p}.bias", (o,))] if i == 5 else [
                (f"{p}.0.weight", (c, 1, 3, 3)), (f"{p}.0.bias", (c,)), *bn(f"{p}.1", c),
                (f"{p}.3.weight", (o, c, 1, 1)), (f"{p}.3.bias", (o,))]
    return out


# ---- helpers ------------------------------------------------------------------------------------------------------

def fill(layout: Layout, seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Distinct random values per tensor (BN counters: distinct integers); names must be unique."""
    assert len({name for name, _ in layout}) == len(layout), "duplicate SG names in the layout"
    if device == "meta":
        return {name: torch.empty(shape, device="meta") for name, shape in layout}
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.tensor(1000 * seed + i) if name.endswith("num_batches_tracked")
                   else torch.rand(shape, generator=generator) + 0.5) for i, (name, shape) in enumerate(layout)}


def load(tmp_path: Path, name: str, sg: dict[str, torch.Tensor],
         recomputed: list[str], **arch: object) -> torch.nn.Module:
    """Save ``sg`` as SG 3.7 does and load it with strict_load on; the ``recomputed`` names must be reported dropped."""
    path = tmp_path / f"{name}_sg.pth"
    torch.save({"net": sg, "packages": {}, "epoch": 1}, path)
    model = models.get(name, num_classes=80, checkpoint_path=path, **arch)
    report = getattr(model, sg_checkpoints.SG_REPORT_ATTRIBUTE)
    assert set(recomputed) <= set(report.dropped)
    return model


def landed(model: torch.nn.Module, sg: dict[str, torch.Tensor]) -> dict[str, str]:
    """SG name -> the model key holding exactly its values; each SG tensor must land once, every key be filled."""
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
    assert sorted(where.values()) == sorted(own), "not every tensor of ours was filled from the SG file"
    return where


def check_loaded(model: torch.nn.Module, sg: dict[str, torch.Tensor], recomputed: list[str]) -> dict[str, str]:
    report = getattr(model, SG_REPORT_ATTRIBUTE)
    assert sorted(report.dropped) == sorted(recomputed) and report.untranslated == []
    assert not report.load.missing and not report.load.unexpected and not report.load.mismatched
    return landed(model, {k: v for k, v in sg.items() if k not in recomputed})


def translates(name: str, layout: Layout) -> list[str]:
    """Meta-device check: SG's names and shapes become exactly ours; returns the SG names the hook has no place for."""
    with torch.device("meta"):
        model = models.get(name, num_classes=80)
    sg = fill(layout, 0, "meta")
    unplaced = [k for k in sg if model.super_gradients_key(k) is None]
    ours, report = translate_sg_state_dict(model, {k: v for k, v in sg.items() if k not in unplaced})
    own = model.state_dict()
    assert not report.untranslated and sorted(ours) == sorted(own)
    assert [k for k in own if ours[k].shape != own[k].shape] == []
    return unplaced


# ---- tests --------------------------------------------------------------------------------------------------------

def test_yolo_nas_s_from_sg(tmp_path: Path) -> None:
    sg = fill(sg_yolo_nas("yolo_nas_s"), seed=21)
    placeholders = [k for k in sg if ".rbr_reparam." in k]
    model = load(tmp_path, "yolo_nas_s", sg, placeholders)
    where = check_loaded(model, sg, placeholders)
    assert where["backbone.stem.conv.branch_3x3.conv.weight"] == "backbone.stem.conv.branch_3x3.conv.weight"
    assert where["backbone.stage3.blocks.bottlenecks.4.alpha"] == "backbone.stage3.blocks.bottlenecks.4.alpha"
    assert where["backbone.context_module.cv2.bn.running_var"] == "backbone.context_module.cv2.bn.running_var"
    assert where["neck.neck2.upsample.weight"] == "neck.neck2.upsample.weight"
    assert where["neck.neck4.blocks.bottlenecks.1.cv2.conv.weight"] == "neck.neck4.blocks.bottlenecks.1.cv2.conv.weight"
    assert where["heads.head1.stem.seq.conv.weight"] == "heads.heads.0.stem.conv.weight"
    assert where["heads.head3.cls_convs.0.seq.bn.running_mean"] == "heads.heads.2.cls_convs.0.bn.running_mean"
    assert where["heads.head2.reg_pred.bias"] == "heads.heads.1.reg_pred.bias"
    assert len(placeholders) == 2 * sum(isinstance(m, QARepVGGBlock) for m in model.modules())


def test_ppyoloe_s_from_sg_levels_mirrored(tmp_path: Path) -> None:
    sg = fill(sg_ppyoloe("ppyoloe_s"), seed=22)
    where = check_loaded(load(tmp_path, "ppyoloe_s", sg, []), sg, [])
    assert where["backbone.stem.conv1.seq.conv.weight"] == "backbone.stem.0.conv.weight"
    assert where["backbone.stem.conv3.seq.bn.bias"] == "backbone.stem.2.bn.bias"
    assert where["backbone.stages.2.attn.project.weight"] == "backbone.stages.2.attn.fc.weight"
    rep = "backbone.stages.3.blocks.0.conv2"
    assert where[f"{rep}.branch_3x3.conv.weight"] == f"{rep}.branch_3x3.0.weight"
    assert where[f"{rep}.branch_1x1.bn.running_var"] == f"{rep}.branch_1x1.1.running_var"
    # ppyoloe_s has one block per CSP stage: SG's "spp" follows block 0, ours is blocks.1.
    fpn = "neck.fpn_stages.0.0"
    assert where[f"{fpn}.convs.spp.conv.seq.conv.weight"] == f"{fpn}.blocks.1.conv.conv.weight"
    assert where["neck.fpn_routes.1.seq.bn.weight"] == "neck.fpn_routes.1.bn.weight"
    # SG's PAN and head indices run deepest first, ours shallowest first.
    assert where["neck.pan_routes.1.seq.conv.weight"] == "neck.pan_routes.0.conv.weight"
    assert where["neck.pan_stages.0.0.convs.0.conv1.seq.conv.weight"] == \
        "neck.pan_stages.1.0.blocks.0.conv1.conv.weight"
    assert where["head.pred_cls.0.weight"] == "heads.pred_cls.2.weight"  # stride 32
    assert where["head.stem_reg.2.conv.seq.bn.running_mean"] == "heads.stem_reg.0.conv.bn.running_mean"  # stride 8


def test_ssd_lite_mobilenet_v2_from_sg(tmp_path: Path) -> None:
    sg = fill(sg_ssd_lite(), seed=23)
    boxes = ["heads.dboxes_xy", "heads.dboxes_wh", "heads.scales", "heads.img_size"]
    model = load(tmp_path, "ssd_lite_mobilenet_v2", sg, boxes, **copy.deepcopy(SG_SSD_LITE_ARCH))
    where = check_loaded(model, sg, boxes)
    f = "backbone.multi_output_backbone.0.features"
    assert where[f"{f}.0.0.weight"] == "backbone.features.0.0.weight"
    assert where[f"{f}.1.conv.3.weight"] == "backbone.features.1.conv.1.weight"  # expansion 1: dw, bn, relu6, pw
    assert where[f"{f}.14.conv.4.running_mean"] == "backbone.features.14.conv.1.1.running_mean"
    assert where[f"{f}.18.1.bias"] == "backbone.features.18.1.bias"
    assert where["neck.neck_blocks.3.conv.6.weight"] == "neck.neck_blocks.3.conv.2.weight"
    assert where["heads.conf.0.0.bias"] == "heads.conf.0.0.bias" and where["heads.loc.5.weight"] == "heads.loc.5.weight"
    # What SG stored as frozen parameters, ours recomputes from the same anchors arch_params.
    assert tuple(model.heads.default_boxes("xywh").shape) == (3234, 4)


@pytest.mark.parametrize("name", ["yolo_nas_m", "yolo_nas_l"])
def test_every_yolo_nas_size_translates(name: str) -> None:
    unplaced = translates(name, sg_yolo_nas(name))
    assert unplaced and all(".rbr_reparam." in k for k in unplaced)


@pytest.mark.parametrize("name", ["ppyoloe_m", "ppyoloe_l", "ppyoloe_x"])
def test_every_ppyoloe_size_translates(name: str) -> None:
    assert translates(name, sg_ppyoloe(name)) == []


def test_sg_ssd_file_does_not_fit_the_default_paper_layout(tmp_path: Path) -> None:
    # ssd_lite_mobilenet_v2 builds the MobileNetV2 paper's layout by default; SG's files need SG_SSD_LITE_ARCH.
    boxes = ["heads.dboxes_xy", "heads.dboxes_wh", "heads.scales", "heads.img_size"]
    with pytest.raises(RecipeError, match="does not fit SSDLiteMobileNetV2"):
        load(tmp_path, "ssd_lite_mobilenet_v2", fill(sg_ssd_lite(), seed=24), boxes)
