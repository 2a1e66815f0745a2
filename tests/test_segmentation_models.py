"""Tests for the segmentation architectures (``architecture: ddrnet_23 ... pp_lite_b_seg75``).

Parameter counts are compared with the published models; everything that runs a forward pass uses small inputs
and, where the widths do not matter, scaled-down widths.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from super_recipes import models
from super_recipes.engine.checkpoints import save_checkpoint
from super_recipes.errors import RecipeError
from super_recipes.models.weights import head_prefix, load_weights
from super_recipes.segmentation.models.common import SegmentationModel

STDC = ["stdc1_seg50", "stdc1_seg75", "stdc2_seg50", "stdc2_seg75"]
PP_LITE = ["pp_lite_t_seg50", "pp_lite_t_seg75", "pp_lite_b_seg50", "pp_lite_b_seg75"]
DDRNET = ["ddrnet_23", "ddrnet_23_slim"]
NAMES = DDRNET + STDC + PP_LITE

# Published parameter counts at 19 classes, in millions, and what they count.
# * DDRNet-23 20.1M and DDRNet-23-slim 5.7M: Hong et al. 2021, "Deep Dual-resolution Networks...", Table of
#   Cityscapes results (the inference model, without the auxiliary head). Cross-check: the RDRNet README
#   (github.com/gyyang23/RDRNet) lists 20.3M / 5.7M counted with the auxiliary head, as our aux models have.
# * STDC1/2-Seg and PP-LiteSeg-T/B: neither paper, nor the official repositories (MichaelFan01/STDC-Seg,
#   PaddleSeg configs/pp_liteseg), nor the SuperGradients model zoo publish a segmentation parameter count. The
#   reference is computed by hand (conv k*k*cin*cout + BN 2c, summed module by module) from the official layer
#   definitions: STDC-Seg models/model_stages.py + nets/stdcnet.py (BiSeNet with STDCNet813/1446, 19 classes;
#   the modules used at inference: backbone features, context path, FFM, conv_out; the never-run STDCNet
#   classifier (conv_last, fc, linear) left out), and PaddleSeg paddleseg/models/pp_liteseg.py with
#   backbones/stdcnet.py and the configs pp_liteseg_stdc{1,2}_cityscapes_1024x512_scale{0.5,0.75}_160k.yml
#   (arm_out_chs T [32, 64, 128] / B [64, 96, 128], seg_head_inter_chs T [32, 64, 64] / B [64, 64, 64]; the
#   inference model is backbone + SPPM + decoder + the 1/8 head).
PUBLISHED_PARAMS = {
    "ddrnet_23": 20.1, "ddrnet_23_slim": 5.7,
    "stdc1_seg50": 8.275104, "stdc1_seg75": 8.275104, "stdc2_seg50": 12.305568, "stdc2_seg75": 12.305568,
    "pp_lite_t_seg50": 8.028320, "pp_lite_t_seg75": 8.028320, "pp_lite_b_seg50": 12.234752,
    "pp_lite_b_seg75": 12.234752,
}
# With the training-only heads, same sources: DDRNet + its auxiliary head (RDRNet README: 20.3M, 5.7M); STDC-Seg +
# conv_out16, conv_out32 and the 1/8 detail head conv_out_sp8; PP-LiteSeg + the 1/16 and 1/32 seg heads.
PUBLISHED_PARAMS_WITH_AUX = {
    "ddrnet_23": 20.3, "ddrnet_23_slim": 5.7,
    "stdc1_seg50": 8.572896, "stdc2_seg50": 12.603360, "pp_lite_t_seg50": 8.141600, "pp_lite_b_seg50": 12.366464,
}
# Our exact counts, a regression guard finer than the 2% tolerance. They differ from the references above only
# by biases the references carry in front of a BatchNorm (DDRNet's two stem convs, PaddleSeg's four SPPM convs),
# which a BatchNorm cancels.
OUR_PARAMS = {"ddrnet_23": 20_148_819, "ddrnet_23_slim": 5_695_923, "stdc1_seg50": 8_275_104,
              "stdc2_seg50": 12_305_568, "pp_lite_t_seg50": 8_027_808, "pp_lite_b_seg50": 12_234_240}
# Scaled-down widths for forward passes (the offline recipes use such models).
TINY = {"ddrnet": {"planes": 8, "head_planes": 16, "spp_planes": 16}, "stdc": {"base_channels": 8},
        "pp_lite": {"base_channels": 8}}
AUX_OUTPUTS = {"ddrnet": ("main", "aux"), "stdc": ("main", "aux8", "aux16", "detail"),
               "pp_lite": ("main", "aux16", "aux32")}


def family(name: str) -> str:
    return next(f for f in ("ddrnet", "stdc", "pp_lite") if name.startswith(f))


def tiny(name: str, num_classes: int = 3, **arch: object) -> SegmentationModel:
    torch.manual_seed(0)
    return models.get(name, num_classes=num_classes, **{**TINY[family(name)], **arch})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny inputs: a second intra-op thread only adds spin-waiting on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds_with_the_published_parameter_count(name):
    model = models.get(name, num_classes=19)
    assert isinstance(model, SegmentationModel) and model.num_classes == 19
    assert abs(count(model) / 1e6 - PUBLISHED_PARAMS[name]) <= 0.02 * PUBLISHED_PARAMS[name]
    if name in OUR_PARAMS:
        assert count(model) == OUR_PARAMS[name]
    assert head_prefix(model) == "heads" and isinstance(model.backbone, nn.Module)
    assert set(model.heads) == {"main"} and model.output_names == ("main",)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS_WITH_AUX))
def test_aux_heads_add_the_published_training_heads(name):
    model = models.get(name, num_classes=19, use_aux_heads=True)
    published = PUBLISHED_PARAMS_WITH_AUX[name]
    assert abs(count(model) / 1e6 - published) <= 0.02 * published
    assert model.output_names == AUX_OUTPUTS[family(name)] and tuple(model.heads) == model.output_names


def test_published_evaluation_scale():
    for name in NAMES:
        model = tiny(name)
        expected = 1.0 if name.startswith("ddrnet") else 0.5 if name.endswith("50") else 0.75
        assert model.eval_scale == expected
        assert model.eval_size == (round(1024 * expected), round(2048 * expected))
    # The 50/75 variants are one network: same widths, same parameters.
    assert count(tiny("stdc2_seg50")) == count(tiny("stdc2_seg75"))


@pytest.mark.parametrize("name", ["ddrnet_23", "stdc1_seg50", "stdc2_seg75", "pp_lite_t_seg50", "pp_lite_b_seg75"])
@pytest.mark.parametrize("size", [(64, 128), (97, 161)])
def test_output_shapes_in_train_and_eval(name, size):
    x = torch.randn(2, 3, *size)
    plain, with_aux = tiny(name, 5), tiny(name, 5, use_aux_heads=True)
    assert plain.train()(x).shape == (2, 5, *size)
    outputs = with_aux.train()(x)
    assert isinstance(outputs, tuple) and len(outputs) == len(with_aux.output_names)
    assert outputs[0].shape == (2, 5, *size)
    for out_name, out in zip(with_aux.output_names[1:], outputs[1:], strict=True):
        assert out.shape[:2] == (2, 1 if out_name == "detail" else 5)
        assert size[0] / 33 < out.shape[2] <= size[0] and size[1] / 33 < out.shape[3] <= size[1]
    with torch.no_grad():
        for model in (plain, with_aux):
            out = model.eval()(x)
            assert isinstance(out, torch.Tensor) and out.shape == (2, 5, *size)


def test_published_widths_train_on_a_batch_of_one():
    # One forward per family at the published widths: the channel arithmetic of the real models, not just the
    # tiny ones, lines up. A batch of one image: the BatchNorms over globally pooled features (one value per
    # channel) must not refuse it, or a last batch of one would crash an epoch.
    x = torch.randn(1, 3, 64, 96)
    for name in ("ddrnet_23_slim", "stdc2_seg50", "pp_lite_b_seg50"):
        outputs = models.get(name, num_classes=4, use_aux_heads=True).train()(x)
        assert outputs[0].shape == (1, 4, 64, 96) and len(outputs) == len(AUX_OUTPUTS[family(name)])


@pytest.mark.parametrize("name", ["ddrnet_23", "stdc1_seg50", "pp_lite_b_seg50"])
def test_tracing_returns_the_main_logits_equal_to_eval(name):
    model = tiny(name, 4, use_aux_heads=True).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes turned into constants
        expected = model(x)
        traced = torch.jit.trace(model, x)
        out = traced(x)
        # Traced in training mode too, only the main logits come out (an export never carries the aux heads).
        traced_train = torch.jit.trace(tiny(name, 4, use_aux_heads=True).train(), x, check_trace=False)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, expected, atol=1e-5)
    assert isinstance(traced_train(x), torch.Tensor)


@pytest.mark.parametrize("name", ["ddrnet_23_slim", "stdc2_seg50", "pp_lite_t_seg75"])
def test_binary_segmentation_has_one_logit_per_pixel(name):
    model = tiny(name, 1, use_aux_heads=True)
    x = torch.randn(2, 3, 64, 64)
    assert model.train()(x)[0].shape == (2, 1, 64, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 1, 64, 64)


@pytest.mark.parametrize("name", ["ddrnet_23", "stdc1_seg75", "pp_lite_b_seg50"])
def test_gradients_reach_every_parameter_with_aux_heads(name):
    model = tiny(name, 3, use_aux_heads=True).train()
    outputs = model(torch.randn(2, 3, 64, 64))
    sum(out.square().mean() for out in outputs).backward()
    # Every parameter takes part (DDP needs no find_unused_parameters) and every head, aux ones included, learns.
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    heads = [n for n, p in model.heads.named_parameters() if not p.grad.abs().sum() > 0]
    assert not heads and set(model.heads) == set(model.output_names)


@pytest.mark.parametrize("name", ["ddrnet_23", "stdc2_seg50", "pp_lite_t_seg50"])
def test_load_backbone_loads_everything_but_the_heads(tmp_path, name):
    source = tiny(name, 5, use_aux_heads=True)
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    path = tmp_path / "ckpt_best.pth"
    save_checkpoint({"net": source.state_dict()}, path)
    trained = source.state_dict()

    # Through models.get, as checkpoint_params does; another class count and no aux heads.
    target = models.get(name, num_classes=3, checkpoint_path=path, load_backbone=True, **TINY[family(name)])
    report = target._super_recipes_load_report
    loaded = target.state_dict()
    backbone = [k for k in loaded if not k.startswith("heads.")]
    assert report.skipped == [k for k in loaded if k.startswith("heads.")] and report.skipped
    assert all(torch.equal(loaded[k], trained[k]) for k in backbone)
    assert not torch.equal(loaded["heads.main." + _first_key(target.heads["main"])],
                           trained["heads.main." + _first_key(target.heads["main"])])
    assert any(k.startswith("backbone.") for k in backbone) and set(report.loaded) == set(backbone)

    # Without load_backbone, another class count is fine-tuning: everything but the heads' class-dependent
    # tensors loads (the aux heads exist on both sides here).
    finetune = tiny(name, 3, use_aux_heads=True)
    report = load_weights(finetune, path)
    assert report.head_reinitialized and all(k.startswith("heads.") for k in report.mismatched)


def _first_key(module: nn.Module) -> str:
    return next(iter(module.state_dict()))


def test_replace_head_keeps_the_rest():
    model = tiny("pp_lite_t_seg50", 5, use_aux_heads=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.replace_head(2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if not k.startswith("heads."))
    assert model.num_classes == 2 and model.train()(torch.randn(2, 3, 64, 64))[1].shape[1] == 2
    with pytest.raises(RecipeError):
        model.replace_head(0)


def test_scaled_down_variants_are_the_same_networks_narrower():
    full, small = models.get("stdc1_seg50"), tiny("stdc1_seg50", 19)
    assert [type(m) for m in full.modules()] == [type(m) for m in small.modules()]
    assert count(small) < count(full) / 50
    slim = models.get("ddrnet_23", planes=32, head_planes=64)
    assert count(slim) == OUR_PARAMS["ddrnet_23_slim"]  # DDRNet-23-slim is DDRNet-23 at these widths
    assert count(models.get("pp_lite_b_seg50", base_channels=16)) < count(models.get("pp_lite_b_seg50")) / 10


@pytest.mark.parametrize(("name", "arch", "key"), [
    ("stdc1_seg50", {"base_channels": 7}, "base_channels"),
    ("pp_lite_t_seg50", {"base_channels": 0}, "base_channels"),
    ("ddrnet_23", {"planes": 0}, "planes"),
    ("ddrnet_23_slim", {"head_planes": 2.5}, "head_planes"),
    ("ddrnet_23", {"num_classes": 0}, "num_classes"),
    ("stdc2_seg75", {"use_aux_heads": "yes"}, "use_aux_heads"),
    ("pp_lite_b_seg75", {"in_channels": -1}, "in_channels"),
])
def test_bad_arch_params_are_refused(name, arch, key):
    with pytest.raises(RecipeError, match=rf"arch_params\b.*{key}") as caught:
        models.get(name, arch_params=arch)
    assert caught.value.key.startswith("arch_params") and name in str(caught.value)


def test_in_channels():
    model = tiny("ddrnet_23_slim", 2, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
