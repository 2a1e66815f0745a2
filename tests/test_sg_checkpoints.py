"""Loading checkpoints written by SuperGradients (SG) into our architectures.

The SG state dicts are written here by hand from SG's own module definitions (github.com/Deci-AI/super-gradients,
``training/models/classification_models/resnet.py`` and ``mobilenetv2.py``, ``detection_models/csp_darknet53.py``
and ``yolo_base.py``): key names, order and shapes as SG's constructors produce them. Every tensor gets distinct
random values, so "landed where SG's name says" is checked by value, never by our own mapping function.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from super_recipes import models
from super_recipes.errors import RecipeError
from super_recipes.models.pretrained import pretrained_url
from super_recipes.models.sg_checkpoints import SG_REPORT_ATTRIBUTE, translate_sg_state_dict

Layout = list[tuple[str, tuple[int, ...]]]


# ---- SG layouts (name, shape), following SG's constructors -------------------------------------------------------

def bn(prefix: str, channels: int) -> Layout:
    return [(f"{prefix}.{n}", (channels,)) for n in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{prefix}.num_batches_tracked", ())]


def sg_resnet(layers: list[int], bottleneck: bool, num_classes: int, cifar: bool = False) -> Layout:
    """SG ResNet / CifarResNet: conv1, bn1, layer1-4 of BasicResNetBlock/Bottleneck (shortcut.0/.1), linear."""
    expansion = 4 if bottleneck else 1
    out: Layout = [("conv1.weight", (64, 3, 3, 3) if cifar else (64, 3, 7, 7)), *bn("bn1", 64)]
    in_planes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for b in range(count):
            stride, p = (2 if stage > 0 and b == 0 else 1), f"layer{stage + 1}.{b}"
            if bottleneck:
                out += [(f"{p}.conv1.weight", (planes, in_planes, 1, 1)), *bn(f"{p}.bn1", planes),
                        (f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes),
                        (f"{p}.conv3.weight", (4 * planes, planes, 1, 1)), *bn(f"{p}.bn3", 4 * planes)]
            else:
                out += [(f"{p}.conv1.weight", (planes, in_planes, 3, 3)), *bn(f"{p}.bn1", planes),
                        (f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes)]
            if stride != 1 or in_planes != expansion * planes:
                out += [(f"{p}.shortcut.0.weight", (expansion * planes, in_planes, 1, 1)),
                        *bn(f"{p}.shortcut.1", expansion * planes)]
            in_planes = expansion * planes
    return out + [("linear.weight", (num_classes, 512 * expansion)), ("linear.bias", (num_classes,))]


def sg_mobilenet_v2(num_classes: int) -> Layout:
    """SG MobileNetV2 at width 1: features.0 conv_bn, InvertedResidual.conv flat Sequentials, features.18."""
    out: Layout = [("features.0.0.weight", (32, 3, 3, 3)), *bn("features.0.1", 32)]
    index, inp = 1, 32
    for t, c, n, _ in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                       [6, 320, 1, 1]]:
        for _ in range(n):
            hidden, p = inp * t, f"features.{index}.conv"
            if t == 1:
                out += [(f"{p}.0.weight", (hidden, 1, 3, 3)), *bn(f"{p}.1", hidden),
                        (f"{p}.3.weight", (c, hidden, 1, 1)), *bn(f"{p}.4", c)]
            else:
                out += [(f"{p}.0.weight", (hidden, inp, 1, 1)), *bn(f"{p}.1", hidden),
                        (f"{p}.3.weight", (hidden, 1, 3, 3)), *bn(f"{p}.4", hidden),
                        (f"{p}.6.weight", (c, hidden, 1, 1)), *bn(f"{p}.7", c)]
            index, inp = index + 1, c
    return out + [(f"features.{index}.0.weight", (1280, 320, 1, 1)), *bn(f"features.{index}.1", 1280),
                  ("classifier.1.weight", (num_classes, 1280)), ("classifier.1.bias", (num_classes,))]


def sg_yolox(depth: float, width: float, depthwise: bool, num_classes: int = 80) -> Layout:
    """SG YoloBase(YoloDarknetBackbone): ``_backbone._modules_list`` 0-9 then ``_head._modules_list`` 0-14."""
    def w(c: int) -> int:
        return int(c * width)

    def d(blocks: int) -> int:
        return max(round(blocks * depth), 1) if blocks > 1 else blocks

    def conv(p: str, cin: int, cout: int, k: int, groups: int = 1) -> Layout:
        return [(f"{p}.conv.weight", (cout, cin // groups, k, k)), *bn(f"{p}.bn", cout)]

    def block(p: str, cin: int, cout: int, k: int) -> Layout:  # Conv, or GroupedConvBlock(dconv, conv)
        return conv(f"{p}.dconv", cin, cin, k, cin) + conv(f"{p}.conv", cin, cout, 1) if depthwise else \
            conv(p, cin, cout, k)

    def csp(p: str, cin: int, cout: int, n: int) -> Layout:
        h = cout // 2
        out = conv(f"{p}.conv1", cin, h, 1) + conv(f"{p}.conv2", cin, h, 1) + conv(f"{p}.conv3", 2 * h, cout, 1)
        for i in range(n):
            out += conv(f"{p}.bottlenecks.{i}.cv1", h, h, 1) + block(f"{p}.bottlenecks.{i}.cv2", h, h, 3)
        return out

    bb, hd = "_backbone._modules_list", "_head._modules_list"
    out = conv(f"{bb}.0", 3, w(64), 6)
    for i, c in enumerate((64, 128, 256, 512)):
        out += block(f"{bb}.{2 * i + 1}", w(c), w(2 * c), 3)
        if i < 3:
            out += csp(f"{bb}.{2 * i + 2}", w(2 * c), w(2 * c), d((3, 9, 9)[i]))
    out += conv(f"{bb}.8.cv1", w(1024), w(512), 1) + conv(f"{bb}.8.cv2", 4 * w(512), w(1024), 1)
    out += csp(f"{bb}.9", w(1024), w(1024), d(3))
    out += conv(f"{hd}.0", w(1024), w(512), 1) + csp(f"{hd}.3", 2 * w(512), w(512), d(3))
    out += conv(f"{hd}.4", w(512), w(256), 1) + csp(f"{hd}.7", 2 * w(256), w(256), d(3))
    out += block(f"{hd}.8", w(256), w(256), 3) + csp(f"{hd}.10", 2 * w(256), w(512), d(3))
    out += block(f"{hd}.11", w(512), w(512), 3) + csp(f"{hd}.13", 2 * w(512), w(1024), d(3))
    inter, x = w(256), f"{hd}.14"
    for kind in ("cls_convs", "reg_convs"):
        for i in range(3):
            out += block(f"{x}.{kind}.{i}.0", inter, inter, 3) + block(f"{x}.{kind}.{i}.1", inter, inter, 3)
    for kind, channels in (("cls_preds", num_classes), ("reg_preds", 4), ("obj_preds", 1)):
        out += [item for i in range(3) for item in ((f"{x}.{kind}.{i}.weight", (channels, inter, 1, 1)),
                                                     (f"{x}.{kind}.{i}.bias", (channels,)))]
    for i, c in enumerate((w(256), w(512), w(1024))):
        out += conv(f"{x}.stems.{i}", c, inter, 1)
    return out


def fill(layout: Layout, seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Distinct random values per tensor (BN counters: distinct integers)."""
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {name: torch.empty(shape, device="meta") for name, shape in layout}
    return {name: (torch.tensor(1000 * seed + i) if name.endswith("num_batches_tracked")
                   else torch.rand(shape, generator=generator) + 0.5) for i, (name, shape) in enumerate(layout)}


def sg_file(path: Path, net: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None = None) -> Path:
    """A checkpoint with SG 3.7's top-level keys."""
    content: dict[str, object] = {"net": net, "acc": 0.7, "epoch": 9, "metrics": {"Accuracy": 0.7},
                                  "packages": {"torch": "2.0.1", "super-gradients": "3.7.1"},
                                  "_best_ckpt_metrics": {"Accuracy": 0.7}, "optimizer_state_dict": {"state": {}},
                                  "scaler_state_dict": None}
    if ema is not None:
        content["ema_net"] = ema
    torch.save(content, path)
    return path


def landed(model: torch.nn.Module, sg: dict[str, torch.Tensor]) -> dict[str, str]:
    """SG name -> the model key that holds exactly its values (each SG tensor must land exactly once)."""
    own = model.state_dict()
    where = {}
    for name, tensor in sg.items():
        hits = [k for k, v in own.items() if v.shape == tensor.shape and torch.equal(v, tensor)]
        assert len(hits) == 1, f"SG {name} landed in {hits}"
        where[name] = hits[0]
    return where


def assert_positional(model: torch.nn.Module, where: dict[str, str], sg: dict[str, torch.Tensor]) -> None:
    """SG's order is ours: the i-th SG tensor landed in the model's i-th tensor (same shape, checked above)."""
    assert list(where.values()) == list(model.state_dict()), "mapping is not by position"
    assert len(sg) == len(model.state_dict())


# ---- ResNets ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "layers", "bottleneck"), [("resnet18", [2, 2, 2, 2], False),
                                                             ("resnet50", [3, 4, 6, 3], True)])
def test_imagenet_resnet_from_sg(tmp_path: Path, name: str, layers: list[int], bottleneck: bool) -> None:
    sg = fill(sg_resnet(layers, bottleneck, 10), seed=1)
    model = models.get(name, num_classes=10, checkpoint_path=sg_file(tmp_path / "ckpt_best.pth", sg))
    where = landed(model, sg)
    assert where["linear.weight"] == "fc.weight" and where["linear.bias"] == "fc.bias"
    assert where["layer2.0.shortcut.0.weight"] == "layer2.0.downsample.0.weight"
    assert where["layer4.0.shortcut.1.running_var"] == "layer4.0.downsample.1.running_var"
    assert where["conv1.weight"] == "conv1.weight" and where["layer3.1.bn2.bias"] == "layer3.1.bn2.bias"
    assert_positional(model, where, sg)


@pytest.mark.parametrize(("name", "layers", "bottleneck"), [("resnet101", [3, 4, 23, 3], True),
                                                             ("resnet152", [3, 8, 36, 3], True),
                                                             ("resnet34", [3, 4, 6, 3], False),
                                                             ("resnet50_3343", [3, 3, 4, 3], True)])
def test_every_resnet_depth_translates_to_our_names_and_shapes(name: str, layers: list[int], bottleneck: bool) -> None:
    # Built on the meta device: names and shapes only, no memory.
    with torch.device("meta"):
        model = models.get(name)
    sg = fill(sg_resnet(layers, bottleneck, 1000), 0, device="meta")
    ours, report = translate_sg_state_dict(model, sg)
    own = model.state_dict()
    assert list(ours) == list(own)
    assert all(ours[k].shape == own[k].shape for k in own)
    assert report.family == "ResNet" and not report.untranslated


def test_resnet18_cifar_from_sg_ema_preferred_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = sg_resnet([2, 2, 2, 2], False, 10, cifar=True)
    net, ema = fill(layout, 2), fill(layout, 3)
    path = sg_file(tmp_path / "ckpt_best.pth", net, ema)
    caplog.set_level(logging.INFO, logger="super_recipes")
    logging.getLogger("super_recipes").propagate = True
    model = models.get("resnet18_cifar", num_classes=10, checkpoint_path=path)
    where = landed(model, ema)  # SG loads ema_net in preference to net, and so do we
    assert where["conv1.weight"] == "stem.0.weight" and where["bn1.running_mean"] == "stem.1.running_mean"
    assert where["layer1.0.conv1.weight"] == "stages.0.0.conv1.weight"
    assert where["layer3.0.shortcut.0.weight"] == "stages.2.0.shortcut.0.weight"
    assert where["linear.weight"] == "fc.weight"
    assert_positional(model, where, ema)
    report = getattr(model, SG_REPORT_ATTRIBUTE)
    assert report.weights_key == "ema_net" and report.family == "CIFAR ResNet"
    assert len(report.renamed) == len(ema) and not report.untranslated and not report.dropped
    assert report.load.loaded == list(model.state_dict()) and not report.load.missing and not report.load.unexpected
    text = report.summary()
    assert "took 'ema_net'" in text and f"{len(ema)} renamed" in text and str(path) in text
    assert any("SuperGradients checkpoint" in r.getMessage() for r in caplog.records)


def sg_cifar_resnet_forward(sg: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SG CifarResNet.forward with BasicResNetBlock (eval mode), written with functional ops on SG's names."""
    def bn_(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sg[f"{p}.running_mean"], sg[f"{p}.running_var"], sg[f"{p}.weight"], sg[f"{p}.bias"])

    out = F.relu(bn_(F.conv2d(x, sg["conv1.weight"], padding=1), "bn1"))
    for stage in range(1, 5):
        for b in range(2):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            y = F.relu(bn_(F.conv2d(out, sg[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            y = bn_(F.conv2d(y, sg[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = bn_(F.conv2d(out, sg[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1") \
                if f"{p}.shortcut.0.weight" in sg else out
            out = F.relu(y + short)
    return F.linear(out.mean((2, 3)), sg["linear.weight"], sg["linear.bias"])


def test_resnet18_cifar_outputs_equal_sg_forward(tmp_path: Path) -> None:
    # Centred weights scaled by fan-in, small BN shifts: the output depends on the input through all 8 blocks.
    def scale(name: str, v: torch.Tensor) -> torch.Tensor:
        if name.endswith(("running_mean", "bias")):
            return (v - 1.0) * 0.1
        return (v - 1.0) * 2 / v[0].numel() ** 0.5 if v.dim() > 1 else v

    sg = {k: scale(k, v) for k, v in fill(sg_resnet([2, 2, 2, 2], False, 10, cifar=True), 9).items()}
    model = models.get("resnet18_cifar", num_classes=10, checkpoint_path=sg_file(tmp_path / "c.pth", sg)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = sg_cifar_resnet_forward(sg, x)
        assert (expected[0] - expected[1]).abs().max() > 0.1 * expected.abs().max()  # not input-independent
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_cifar_resnet_variants_translate() -> None:
    with torch.device("meta"):
        model = models.get("resnet50_cifar")
    ours, _ = translate_sg_state_dict(model, fill(sg_resnet([3, 4, 6, 3], True, 10, cifar=True), 0, "meta"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_mismatched_sg_file_is_named(tmp_path: Path) -> None:
    path = sg_file(tmp_path / "resnet18_sg.pth", fill(sg_resnet([2, 2, 2, 2], False, 10), 4))
    with pytest.raises(RecipeError) as err:
        models.get("resnet34", num_classes=10, checkpoint_path=path)
    message = str(err.value)
    assert "SuperGradients checkpoint" in message and str(path) in message and "ResNet" in message
    assert "layer1.2.conv1.weight" in message  # a ResNet-34 tensor the ResNet-18 file lacks
    cifar = sg_file(tmp_path / "cifar_sg.pth", fill(sg_resnet([2, 2, 2, 2], False, 10, cifar=True), 5))
    with pytest.raises(RecipeError, match="does not fit ResNet"):
        models.get("resnet18", num_classes=10, checkpoint_path=cifar)


def test_our_own_checkpoints_are_not_taken_for_sg(tmp_path: Path) -> None:
    model = models.get("resnet_tiny_cifar", num_classes=10)
    path = tmp_path / "ours.pth"
    torch.save({"net": model.state_dict(), "packages": {}, "recipe": "a: 1\n", "epoch": 1}, path)
    loaded = models.get("resnet_tiny_cifar", num_classes=10, checkpoint_path=path)
    assert not hasattr(loaded, SG_REPORT_ATTRIBUTE)


# ---- MobileNetV2 --------------------------------------------------------------------------------------------------

def test_mobilenet_v2_from_sg(tmp_path: Path) -> None:
    sg = fill(sg_mobilenet_v2(10), seed=6)
    model = models.get("mobilenet_v2", num_classes=10, checkpoint_path=sg_file(tmp_path / "mbv2.pth", sg))
    where = landed(model, sg)
    assert where["features.0.0.weight"] == "features.0.0.weight"
    assert where["features.1.conv.3.weight"] == "features.1.conv.1.weight"  # expansion 1: dw, bn, relu6, pw, bn
    assert where["features.1.conv.4.bias"] == "features.1.conv.2.bias"
    assert where["features.2.conv.3.weight"] == "features.2.conv.1.0.weight"  # expanded: pw, bn, relu6, dw, ...
    assert where["features.17.conv.7.running_var"] == "features.17.conv.3.running_var"
    assert where["classifier.1.weight"] == "classifier.1.weight"
    assert_positional(model, where, sg)


# ---- RegNetY, RepVGG ----------------------------------------------------------------------------------------------

def sg_regnet_y(depths: list[int], widths: list[int], group_width: int, num_classes: int) -> Layout:
    """SG AnyNetX with XBlocks (bottleneck ratio 1, se_ratio 4): net.stem, net.stage_i.blocks.block_j, net.head.fc."""
    out: Layout = [("net.stem.conv.weight", (32, 3, 3, 3)), *bn("net.stem.bn", 32)]
    cin = 32
    for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        for j in range(depth):
            p, stride, se = f"net.stage_{i}.blocks.block_{j}", 2 if j == 0 else 1, cin // 4
            out += [(f"{p}.conv_block_1.0.weight", (width, cin, 1, 1)), *bn(f"{p}.conv_block_1.1", width),
                    (f"{p}.conv_block_2.0.weight", (width, group_width, 3, 3)), *bn(f"{p}.conv_block_2.1", width),
                    (f"{p}.se.1.weight", (se, width, 1, 1)), (f"{p}.se.1.bias", (se,)),
                    (f"{p}.se.3.weight", (width, se, 1, 1)), (f"{p}.se.3.bias", (width,)),
                    (f"{p}.conv_block_3.0.weight", (width, width, 1, 1)), *bn(f"{p}.conv_block_3.1", width)]
            if stride != 1 or cin != width:
                out += [(f"{p}.shortcut.0.weight", (width, cin, 1, 1)), *bn(f"{p}.shortcut.1", width)]
            cin = width
    return out + [("net.head.fc.weight", (num_classes, cin)), ("net.head.fc.bias", (num_classes,))]


def test_regnet_y200_from_sg(tmp_path: Path) -> None:
    model = models.get("regnetY200", num_classes=10, variant="super_gradients")
    sg = fill(sg_regnet_y(model.plan["depths"], model.plan["widths"], 8, 10), seed=10)
    model = models.get("regnetY200", num_classes=10, variant="super_gradients",
                       checkpoint_path=sg_file(tmp_path / "regnet.pth", sg))
    where = landed(model, sg)
    assert where["net.head.fc.weight"] == "fc.weight" and where["net.stem.bn.running_var"] == "stem.1.running_var"
    assert where["net.stage_2.blocks.block_0.shortcut.0.weight"] == "trunk_output.block3.block3-0.proj.0.weight"
    assert where["net.stage_3.blocks.block_6.se.3.bias"] == "trunk_output.block4.block4-6.f.se.fc2.bias"
    assert getattr(model, SG_REPORT_ATTRIBUTE).family == "RegNetY"


def test_repvgg_a0_from_sg_names_alike(tmp_path: Path) -> None:
    # SG RepVGG A0: struct [2, 4, 14, 1], widths 64/128/256/512 x [0.75, 0.75, 0.75, 2.5], stem int(64 * 0.75).
    def rep(p: str, cin: int, cout: int, stride: int) -> Layout:
        out = [(f"{p}.branch_3x3.conv.weight", (cout, cin, 3, 3)), *bn(f"{p}.branch_3x3.bn", cout),
               (f"{p}.branch_1x1.conv.weight", (cout, cin, 1, 1)), *bn(f"{p}.branch_1x1.bn", cout)]
        return (bn(f"{p}.no_conv_branch", cin) if stride == 1 and cin == cout else []) + out

    layout, cin = rep("stem", 3, 48, 2), 48
    for stage, (depth, width) in enumerate(zip((2, 4, 14, 1), (48, 96, 192, 1280), strict=True), start=1):
        for j in range(depth):
            layout += rep(f"stage{stage}.{j}", cin, width, 2 if j == 0 else 1)
            cin = width
    sg = fill(layout + [("linear.weight", (10, 1280)), ("linear.bias", (10,))], seed=11)
    model = models.get("repvgg_a0", num_classes=10, checkpoint_path=sg_file(tmp_path / "repvgg.pth", sg))
    where = landed(model, sg)
    assert all(sg_name == ours for sg_name, ours in where.items())


# ---- YOLOX --------------------------------------------------------------------------------------------------------

def test_yolox_s_from_sg_stem_converted_and_bn_eps(tmp_path: Path) -> None:
    sg = fill(sg_yolox(0.33, 0.50, False), seed=7)
    model = models.get("yolox_s", checkpoint_path=sg_file(tmp_path / "yolox_s.pth", sg)).eval()
    stem_weight = sg.pop("_backbone._modules_list.0.conv.weight")  # converted, checked by its output below
    where = landed(model, sg)
    bb = "_backbone._modules_list"
    assert where[f"{bb}.9.bottlenecks.0.cv2.conv.weight"] == "backbone.dark5.2.blocks.0.conv2.conv.weight"
    assert where["_backbone._modules_list.8.cv2.bn.running_mean"] == "backbone.dark5.1.conv2.bn.running_mean"
    assert where["_head._modules_list.13.conv3.bn.weight"] == "neck.bottom_up_p5.conv3.bn.weight"
    assert where["_head._modules_list.14.cls_preds.2.bias"] == "head.cls_preds.2.bias"
    assert where["_head._modules_list.14.stems.0.conv.weight"] == "head.stems.0.conv.weight"
    own = list(model.state_dict())
    assert own[0] == "backbone.stem.conv.conv.weight" and list(where.values()) == own[1:]  # the rest by position
    # SG's stem: SiLU(BN(conv6x6 stride 2 padding 2)) with BatchNorm eps 1e-3 (yolo_base._initialize_weights).
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.randn(2, 3, 64, 64)
    p = "_backbone._modules_list.0.bn"
    expected = F.silu(F.batch_norm(F.conv2d(x, stem_weight, stride=2, padding=2), sg[f"{p}.running_mean"],
                                   sg[f"{p}.running_var"], sg[f"{p}.weight"], sg[f"{p}.bias"], eps=1e-3))
    torch.testing.assert_close(model.backbone.stem(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "depth", "width", "depthwise"), [("yolox_n", 0.33, 0.25, True),
                                                                  ("yolox_t", 0.33, 0.375, False),
                                                                  ("yolox_m", 0.67, 0.75, False),
                                                                  ("yolox_l", 1.0, 1.0, False),
                                                                  ("yolox_x", 1.33, 1.25, False)])
def test_every_yolox_size_translates(name: str, depth: float, width: float, depthwise: bool) -> None:
    with torch.device("meta"):
        model = models.get(name)
    ours, report = translate_sg_state_dict(model, fill(sg_yolox(depth, width, depthwise), 0, "meta"))
    own = model.state_dict()
    assert list(ours) == list(own) and all(ours[k].shape == own[k].shape for k in own)
    assert list(report.converted.values()) == ["backbone.stem.conv.conv.weight"] and not report.untranslated


def test_yolox_coco_pretrained_weights_resolve_to_sg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for size in ("n", "t", "s", "m", "l"):
        assert pretrained_url(f"yolox_{size}", "coco") == f"https://sg-hub-nv.s3.amazonaws.com/models/yolox_{size}_coco.pth"
    monkeypatch.setenv("SUPER_RECIPES_WEIGHTS_DIR", str(tmp_path))
    # SG's published files hold only the weights (no packages / metrics); legacy stride buffers are dropped.
    sg = fill(sg_yolox(0.33, 0.25, True), seed=8)
    torch.save({"ema_net": {**sg, "_head._modules_list.14.stride": torch.tensor([8.0, 16.0, 32.0])}},
               tmp_path / "yolox_n_coco.pth")
    model = models.get("yolox_n", pretrained_weights="coco")
    report = getattr(model, SG_REPORT_ATTRIBUTE)
    assert report.weights_key == "ema_net" and report.dropped == ["_head._modules_list.14.stride"]
    sg.pop("_backbone._modules_list.0.conv.weight")
    where = landed(model, sg)
    assert where["_head._modules_list.14.reg_convs.1.0.dconv.conv.weight"] == "head.reg_convs.1.0.depthwise.conv.weight"
    assert where["_backbone._modules_list.1.conv.bn.bias"] == "backbone.dark2.0.pointwise.bn.bias"
