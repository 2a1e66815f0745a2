"""RepVGG (super_recipes.models.repvgg): published parameter counts, branch fusion, shapes and arguments."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import SqueezeExcitation

from super_recipes import models
from super_recipes.errors import RecipeError
from super_recipes.models.repvgg import RepVGG, RepVGGBlock

# Published parameters in millions at 1000 classes, (training form, deployed form). Deployed: the paper's Table 4
# (Ding et al. 2021, arXiv:2101.03697). Training form, and both D2SE figures: the authors' released weights as
# counted in mmpretrain's configs/repvgg/README.md (timm's model card gives D2SE 133.3M for the same weights).
PUBLISHED = {
    "repvgg_a0": (9.11, 8.30),
    "repvgg_a1": (14.09, 12.78),
    "repvgg_a2": (28.21, 25.49),
    "repvgg_b0": (15.82, 14.33),
    "repvgg_b1": (57.42, 51.82),
    "repvgg_b2": (89.02, 80.31),
    "repvgg_b3": (123.09, 110.96),
    "repvgg_d2se": (133.33, 120.39),
}
TINY = {"struct": [1, 2, 1, 1], "width_multiplier": [0.25, 0.25, 0.25, 0.5]}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so that fusing them is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) * 0.6 + 0.4)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_match_published(name: str) -> None:
    train_m, deploy_m = PUBLISHED[name]
    with torch.device("meta"):
        model = models.get(name, num_classes=1000)
        deployed = models.get(name, num_classes=1000, build_residual_branches=False)
        assert _params(model) == pytest.approx(train_m * 1e6, rel=0.01)
        assert _params(deployed) == pytest.approx(deploy_m * 1e6, rel=0.01)
        model.prep_model_for_conversion(input_size=(1, 3, 224, 224))  # fusing works on meta tensors too
        assert _params(model) == _params(deployed)
        out = model(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 1000)


def test_deployed_count_equals_plain_vgg_formula() -> None:
    # Independent oracle: a deployed RepVGG is 3x3 convolutions with bias (9*cin*cout + cout) and a linear layer.
    model = models.get("repvgg_custom", num_classes=10, struct=[1, 2, 1, 1], width_multiplier=[0.5, 1, 1, 1],
                       build_residual_branches=False)
    convs = [(3, 32), (32, 32), (32, 128), (128, 128), (128, 256), (256, 512)]  # stem min(64, 32) = 32
    expected = sum(9 * cin * cout + cout for cin, cout in convs) + 512 * 10 + 10
    assert _params(model) == expected


def test_identity_branch_only_where_shapes_allow() -> None:
    model = models.get("repvgg_custom", **TINY)
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 1 + 1 + 2 + 1 + 1
    # Only the second block of stage 2 keeps stride 1 and its channel count.
    with_identity = [m for m in blocks if m.no_conv_branch is not None]
    assert with_identity == [model.stage2[1]]


@pytest.mark.parametrize("use_se", [False, True])
def test_fusion_keeps_eval_outputs(use_se: bool) -> None:
    torch.manual_seed(0)
    model = models.get("repvgg_custom", num_classes=5, use_se=use_se, **TINY)
    _randomise(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.prep_model_for_conversion()
        after = model(x)
    assert before.abs().max() > 1e-2  # a meaningful comparison, not two near-zero tensors
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert all(b.fused and b.branch_3x3 is None and b.no_conv_branch is None for b in blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, SqueezeExcitation) for m in model.modules()) == use_se
    model.prep_model_for_conversion()  # fusing twice is harmless
    with torch.no_grad():
        torch.testing.assert_close(model(x), after)


def test_fusion_keeps_eval_outputs_repvgg_a0() -> None:
    torch.manual_seed(1)
    model = models.get("repvgg_a0", num_classes=10)
    _randomise(model, seed=1)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.prep_model_for_conversion()
        after = model(x)
    assert before.abs().max() > 1e-2
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_block_fusion_matches_branch_sum_in_float64() -> None:
    # One block in double precision against the explicit sum of its branches.
    block = RepVGGBlock(8, 8, stride=1).double()
    _randomise(block, seed=2)
    block.eval()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert block.branch_3x3 is not None and block.branch_1x1 is not None and block.no_conv_branch is not None
        expected = torch.relu(block.branch_3x3(x) + block.branch_1x1(x) + block.no_conv_branch(x))
        block.fuse_branches()
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)


def test_shared_fuse_helper_finds_every_block() -> None:
    from super_recipes.detection.customizable import fuse_reparameterizable_blocks

    model = models.get("repvgg_custom", **TINY).eval()
    assert fuse_reparameterizable_blocks(model) == 6
    assert all(b.fused for b in model.modules() if isinstance(b, RepVGGBlock))


def test_state_dict_uses_supergradients_names() -> None:
    # Key names of SuperGradients' RepVGG checkpoints, so that they load without renaming.
    keys = models.get("repvgg_a0").state_dict().keys()
    for key in ["stem.branch_3x3.conv.weight", "stem.branch_3x3.bn.running_var", "stem.branch_1x1.conv.weight",
                "stage1.1.no_conv_branch.weight", "stage3.13.branch_3x3.bn.bias", "linear.weight", "linear.bias"]:
        assert key in keys
    assert "stage1.0.no_conv_branch.weight" not in keys
    deployed = models.get("repvgg_a0", build_residual_branches=False).state_dict().keys()
    assert {"stem.rbr_reparam.weight", "stem.rbr_reparam.bias", "stage4.0.rbr_reparam.weight"} <= set(deployed)
    assert not any("branch" in key for key in deployed)


def test_forward_shapes_and_options() -> None:
    model = models.get("repvgg_custom", num_classes=3, in_channels=1, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
        assert model(torch.randn(1, 1, 96, 64)).shape == (1, 3)  # any size that survives five stride-2 steps
    backbone = models.get("repvgg_custom", backbone_mode=True, **TINY).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 256, 2, 2)  # 512 * 0.5 channels, 64 / 32
    assert not hasattr(backbone, "linear")


def test_training_step_runs_through_branches() -> None:
    model = models.get("repvgg_custom", num_classes=4, **TINY).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.stage2[1].no_conv_branch.weight.grad is not None
    assert model.stage2[1].branch_1x1.conv.weight.grad is not None


def test_custom_arguments_from_arch_params() -> None:
    arch_params = OmegaConf.create({"struct": [1, 1, 1, 1], "width_multiplier": 0.25, "use_se": True,
                                    "build_residual_branches": False, "num_classes": 6, "in_channels": 4})
    model = models.get("repvgg_custom", num_classes=6, arch_params=arch_params)
    assert isinstance(model, RepVGG)
    assert model.stem.rbr_reparam.in_channels == 4 and model.stem.out_channels == 16
    assert [model.stage1[0].out_channels, model.stage4[0].out_channels] == [16, 128]
    assert all(b.fused for b in model.modules() if isinstance(b, RepVGGBlock))
    assert sum(isinstance(m, SqueezeExcitation) for m in model.modules()) == 5
    assert model.linear.out_features == 6 and model.num_classes == 6
    # SuperGradients' stem width (int(64a) instead of the paper's min(64, 64a)), for its B1 checkpoints.
    assert models.get("repvgg_b1", stem_width=128, build_residual_branches=False).stem.out_channels == 128


def test_d2se_has_se_in_every_block() -> None:
    with torch.device("meta"):
        model = models.get("repvgg_d2se")
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 1 + 8 + 14 + 24 + 1
    assert all(isinstance(b.se, SqueezeExcitation) for b in blocks)


@pytest.mark.parametrize("arch_params, needle", [
    ({"struct": [2, 4, 14], "width_multiplier": 1.0}, "struct"),
    ({"struct": [2, 4, 0, 1], "width_multiplier": 1.0}, "struct"),
    ({"struct": "2,4,14,1", "width_multiplier": 1.0}, "struct"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": [1, 1, 1]}, "width_multiplier"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": -1.0}, "width_multiplier"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": "wide"}, "width_multiplier"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": 1.0, "num_classes": 0}, "num_classes"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": 1.0, "in_channels": 0}, "in_channels"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": 1.0, "stem_width": 1.5}, "stem_width"),
    ({"struct": [2, 4, 14, 1], "width_multiplier": 1.0, "depth": 3}, "depth"),
    ({"width_multiplier": 1.0}, "struct"),
])
def test_bad_arguments_are_refused(arch_params: dict, needle: str) -> None:
    with torch.device("meta"), pytest.raises(RecipeError, match=needle):
        models.get("repvgg_custom", arch_params=arch_params)


def test_named_sizes_refuse_structure_arguments() -> None:
    with pytest.raises(RecipeError, match="struct"):
        models.get("repvgg_a0", struct=[1, 1, 1, 1])
