"""The timm extra: ``timm/<name>`` models, the ImageNet-21K-P table's backbones and their published weights,
loaded offline from files in the weights cache folder (written here in the published layouts)."""

import sys

import pytest
import torch

from super_recipes import models
from super_recipes.errors import RecipeError
from super_recipes.registry import MODELS

timm = pytest.importorskip("timm")


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPER_RECIPES_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


def test_timm_names_build_timm_models_with_arch_params():
    torch.manual_seed(0)
    model = models.get("timm/resnet18", num_classes=3, arch_params={"drop_rate": 0.25}).eval()
    assert type(model).__name__ == "ResNet" and model.num_classes == 3 and model.drop_rate == 0.25
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", num_classes=3, drop_rate=0.25).eval()
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(image), reference(image))
    assert "timm/resnet18" in MODELS and "timm/resnet181" not in MODELS

    with pytest.raises(RecipeError, match=r"Unknown timm model 'resnet181'.*Did you mean: resnet18"):
        models.get("timm/resnet181")
    with pytest.raises(RecipeError, match="does not take the arch_params.*'bogus'"):
        models.get("timm/resnet18", bogus=1)


def test_without_the_extra_one_line_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    for name in ("timm/resnet18", "tresnet_m"):
        with pytest.raises(RecipeError) as error:
            models.get(name)
        assert "\n" not in str(error.value) and "pip install 'super-recipes[timm]'" in str(error.value)


def test_the_table_names_build_the_architectures_of_the_published_weights():
    expected = {"tresnet_m": "tresnet_m", "tresnet_l": "tresnet_v2_l", "mixer_b16_224": "mixer_b16_224",
                "mobilenetv3_large_100": "mobilenetv3_large_100",
                "vit_base_patch16_224": "vit_base_patch16_224_miil"}
    for name, architecture in expected.items():
        assert MODELS.get(name).__name__ == f"timm/{architecture}"
        assert timm.models.get_pretrained_cfg(f"{architecture}.{'in21k' if 'vit' in name else 'miil_in21k'}")
    with pytest.raises(RecipeError, match="OFA-595 .* not in timm"):
        models.get("ofa_flops_595m_s")


def test_imagenet21k_weights_load_from_the_cache_folder(weights_dir):
    # The published file of mobilenetv3_large_100.miil_in21k, under the name of its URL, in timm's layout.
    torch.manual_seed(1)
    published = timm.create_model("mobilenetv3_large_100", num_classes=11221).eval()
    torch.save(published.state_dict(), weights_dir / "mobilenetv3_large_100_in21k_miil-d71cc17b.pth")

    model = models.get("mobilenetv3_large_100", pretrained_weights="imagenet21k").eval()
    image = torch.rand(2, 3, 96, 96)
    assert model.num_classes == 11221 and torch.equal(model(image), published(image))
    report = model._super_recipes_load_report
    assert not report.not_loaded and "mobilenetv3_large_100.miil_in21k" in report.source

    # Fine-tuning: another class count keeps everything but the classifier, which is reported.
    small = models.get("mobilenetv3_large_100", num_classes=10, pretrained_weights="imagenet21k")
    report = small._super_recipes_load_report
    assert report.head_reinitialized and set(report.mismatched) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(small.conv_stem.weight, published.conv_stem.weight)

    # The same file through timm's own name and tag.
    same = models.get("timm/mobilenetv3_large_100", num_classes=11221, pretrained_weights="miil_in21k").eval()
    assert torch.equal(same(image), published(image))
    with pytest.raises(RecipeError, match="no pretrained weights 'in22k'; valid values: .*miil_in21k"):
        models.get("timm/mobilenetv3_large_100", pretrained_weights="in22k")


def test_resnet50_imagenet21k_is_the_miil_file_in_torchvision_layout(weights_dir):
    torch.manual_seed(2)
    published = timm.create_model("resnet50", num_classes=11221).eval()
    torch.save({"state_dict": published.state_dict(), "epoch": 80}, weights_dir / "resnet50_miil_21k.pth")
    model = models.get("resnet50", num_classes=11221, pretrained_weights="imagenet21k").eval()
    assert type(model).__module__.startswith("torchvision")
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model(image), published(image), rtol=1e-5, atol=1e-5)


def test_missing_weights_name_the_file_and_folder(weights_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries against the network
    with pytest.raises(RecipeError) as error:
        models.get("tresnet_m", num_classes=4, pretrained_weights="imagenet21k")
    message = str(error.value)
    assert "tresnet_m.miil_in21k.safetensors" in message and str(weights_dir) in message
    assert "https://huggingface.co/timm/tresnet_m.miil_in21k/resolve/main/model.safetensors" in message


def test_a_recipe_trains_a_timm_model_from_local_21k_weights(tmp_path, weights_dir):
    """imagenet_vit_base with the timm route its header gives: a timm ViT fine-tuned from ImageNet-21k weights
    (a tiny ViT here, its 21k file written to the cache), one real step on the tiny ImageNet folder."""
    from tests.test_imagenet_recipes import imagenet_data_overrides
    from tests.test_recipes import _one_step

    torch.manual_seed(4)
    published = timm.create_model("vit_tiny_patch16_224", num_classes=21843, img_size=32)
    torch.save(published.state_dict(), weights_dir / "vit_tiny_patch16_224.augreg_in21k.pth")
    overrides = [o for o in imagenet_data_overrides("imagenet_vit_base", tmp_path / "imagenet", size=32)
                 if "image_size" not in o]
    record = _one_step("imagenet_vit_base", tmp_path, [
        *overrides, "architecture=timm/vit_tiny_patch16_224", "+arch_params.img_size=32",
        "checkpoint_params.pretrained_weights=imagenet21k"])
    assert any(key.startswith("valid/") for key in record)
    trained = torch.load(tmp_path / "ckpt" / "imagenet_vit_base" / "ckpt_latest.pth", weights_only=True)["net"]
    start = published.state_dict()["patch_embed.proj.weight"]
    # One SGD step away from the 21k weights (a fresh initialization would be about 1.4 away).
    assert (trained["patch_embed.proj.weight"] - start).norm() / start.norm() < 0.05
    assert trained["head.weight"].shape == (1000, 192)  # the recipe's ImageNet-1k head, re-initialized
