"""ONNX export of classification and segmentation models (``super_recipes.export``): the exported file, run by
ONNX Runtime on real tinycoco images, against the PyTorch model it came from; preprocessing inside the graph
against a torchvision oracle; fp16, RepVGG fusion on a copy, opset and metadata, and the error without the extra.

Random-init models get their BatchNorm statistics from one train-mode pass over the real images (see
:func:`calibrate_batchnorm`): with the init's mean 0 / variance 1, activations of deep random nets shrink layer
after layer and the outputs say little about the graph, and folding BN into convolutions would be trivial.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torchvision.transforms.v2 import functional as TF  # noqa: E402

from super_recipes import models  # noqa: E402
from super_recipes.errors import RecipeError  # noqa: E402
from super_recipes.export import export_model  # noqa: E402
from super_recipes.export.onnx_export import read_metadata  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ONNX Runtime and PyTorch compute bilinear sampling positions in float32 by different formulas: for a 480 -> 256
# resize the pixels differ by up to ~0.01 grey level at sharp edges (1.3e-4 after normalisation), which these
# random-init networks turn into up to ~5e-4 of the logits' range (STDC, measured). A wrong size, crop, channel
# order or normalisation moves logits by far more than 1e-3.
RESIZE_TOLERANCE = 1e-3


def load_images(shape: tuple[int, int] | None = None, count: int = 3) -> list[torch.Tensor]:
    """``count`` real tinycoco train images, uint8 RGB ``[3, H, W]`` (only those of ``shape`` when given)."""
    folder = TINYCOCO / "images" / "train2017"
    if not folder.is_dir():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    images = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as file:
            image = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1).contiguous()
        if shape is None or tuple(image.shape[-2:]) == tuple(shape):
            images.append(image)
        if len(images) == count:
            return images
    pytest.skip(f"fewer than {count} tinycoco images of shape {shape}")


def model_batch(images: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
    """The test's own preprocessing for raw (float-input) graphs: resize to ``hw``, [0, 1], ImageNet-normalised."""
    batch = torch.stack([TF.resize(image, list(hw), antialias=True) for image in images]).float() / 255.0
    return TF.normalize(batch, list(IMAGENET_MEAN), list(IMAGENET_STD))


def calibrate_batchnorm(model: nn.Module, batch: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random BN affine parameters, then running statistics from one train-mode pass on ``batch``; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0  # the running statistics become this batch's
                if module.affine:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                    module.bias.normal_(0.0, 0.1, generator=generator)
        model.train()(batch)
    return model.eval()


def run_onnx(path: str | Path, array: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})


def relative_error(actual: np.ndarray | torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute difference relative to the largest expected magnitude (logits have no natural scale)."""
    actual = torch.as_tensor(np.asarray(actual)).float()
    return float((actual - expected.float()).abs().max() / expected.abs().max())


def main_output(output: torch.Tensor | tuple | list) -> torch.Tensor:
    while isinstance(output, tuple | list):
        output = output[0]
    return output


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = models.get("resnet18", num_classes=10)
    return calibrate_batchnorm(model, model_batch(load_images(), (224, 224)))


def test_resnet18_static_and_dynamic_batch_match_pytorch(resnet18, tmp_path):
    batch = model_batch(load_images(), (224, 224))
    with torch.no_grad():
        expected = resnet18(batch)
    static = resnet18.export(tmp_path / "static.onnx", batch_size=1)  # model.export: models.get attaches it
    dynamic = export_model(resnet18, tmp_path / "dynamic.onnx", batch_size=None)
    assert static.input_shape == [1, 3, 224, 224] and dynamic.input_shape == ["batch", 3, 224, 224]
    assert static.output_names == dynamic.output_names == ["logits"]

    for i in range(len(batch)):  # the static file takes exactly one image
        (logits,) = run_onnx(static.path, batch[i:i + 1].numpy())
        assert logits.shape == (1, 10)
        assert relative_error(logits, expected[i:i + 1]) <= 1e-4
    for count in (1, 3):  # the dynamic file was traced with a batch of 2
        (logits,) = run_onnx(dynamic.path, batch[:count].numpy())
        assert logits.shape == (count, 10)
        assert relative_error(logits, expected[:count]) <= 1e-4
    # The batch dimension of the file is symbolic, not a traced constant.
    session = ort.InferenceSession(dynamic.path, providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    assert isinstance(session.get_outputs()[0].shape[0], str)


@pytest.mark.parametrize("image_hw", [(480, 640), (640, 480)], ids=["landscape", "portrait"])
def test_preprocessing_in_graph_matches_torchvision_oracle(resnet18, tmp_path, image_hw):
    """uint8 images in; the graph's short-side resize, centre crop and normalisation against torchvision's."""
    resnet18.processing_params = {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    try:
        result = export_model(resnet18, tmp_path / "pre.onnx", preprocessing=True, image_size=image_hw,
                              batch_size=None)
    finally:
        del resnet18.processing_params
    images = torch.stack(load_images(image_hw, count=2))
    assert result.input_dtype == "uint8" and result.input_shape == ["batch", 3, *image_hw]
    resized = [256, 341] if image_hw[0] < image_hw[1] else [341, 256]  # torchvision Resize(256): short side
    assert read_metadata(result.path)["preprocessing"]["resize"] == resized
    (logits,) = run_onnx(result.path, images.numpy())

    def oracle(resized: torch.Tensor) -> torch.Tensor:
        cropped = TF.center_crop(resized, [224, 224])
        normalised = TF.normalize(cropped.float() / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))
        with torch.no_grad():
            return resnet18(normalised)

    # The graph resizes the float image (ONNX Resize, bilinear, half-pixel centres, no antialiasing), as
    # torchvision does here; RESIZE_TOLERANCE says why not 1e-4.
    exact = oracle(TF.resize(images.float(), 256, interpolation=TF.InterpolationMode.BILINEAR, antialias=False))
    assert relative_error(logits, exact) <= RESIZE_TOLERANCE
    # A uint8 pipeline (torchvision's Resize on a uint8 tensor) rounds each resized pixel to an integer: up to
    # 0.5/255, about 0.009 after the ImageNet std, on every pixel. This random-init network (random BN scales)
    # turns that into ~1.5% of the logits' range (measured 1.5e-2): a sanity bound, the check above is the exact one.
    rounded = oracle(TF.resize(images, 256, interpolation=TF.InterpolationMode.BILINEAR, antialias=False))
    assert relative_error(logits, rounded) <= 5e-2


def test_segmentation_logits_match_pytorch(tmp_path):
    torch.manual_seed(0)
    images = load_images(count=2)
    model = calibrate_batchnorm(models.get("stdc1_seg50", num_classes=5), model_batch(images, (256, 384)))
    result = export_model(model, tmp_path / "seg.onnx", input_size=(256, 384), batch_size=None)
    assert result.task == "segmentation" and result.output_names == ["logits"]
    batch = model_batch(images, (256, 384))
    with torch.no_grad():
        expected = main_output(model(batch))
    (logits,) = run_onnx(result.path, batch.numpy())
    assert logits.shape == (2, 5, 256, 384)
    assert relative_error(logits, expected) <= 1e-4


def test_segmentation_preprocessing_in_graph_matches_oracle(tmp_path):
    """uint8 RGB 480x640 in: resized to the model's 256x384, [0, 1], ImageNet-normalised (predict's defaults)."""
    torch.manual_seed(0)
    images = torch.stack(load_images((480, 640), count=2))
    model = calibrate_batchnorm(models.get("stdc1_seg50", num_classes=5), model_batch(list(images), (256, 384)))
    result = export_model(model, tmp_path / "seg_pre.onnx", input_size=(256, 384), image_size=(480, 640),
                          preprocessing=True, batch_size=None)
    pre = read_metadata(result.path)["preprocessing"]
    assert pre["resize"] == [256, 384] and pre["mean"] == list(IMAGENET_MEAN) and pre["std"] == list(IMAGENET_STD)
    (logits,) = run_onnx(result.path, images.numpy())
    # The graph's resize is the float bilinear one without antialiasing (ONNX Resize); the same here.
    # Not a factor-2 resize: sampling positions carry float32 rounding (RESIZE_TOLERANCE).
    resized = TF.resize(images.float(), [256, 384], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    with torch.no_grad():
        expected = main_output(model(TF.normalize(resized / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))))
    assert logits.shape == (2, 5, 256, 384)
    assert relative_error(logits, expected) <= RESIZE_TOLERANCE


def test_fp16_file_takes_half_precision_and_stays_close_to_fp32(resnet18, tmp_path):
    result = export_model(resnet18, tmp_path / "half.onnx", precision="fp16", batch_size=None)
    proto = onnx.load(result.path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    assert result.input_dtype == "float16" and read_metadata(result.path)["precision"] == "fp16"
    batch = model_batch(load_images(), (224, 224))
    with torch.no_grad():
        expected = resnet18(batch)
    (logits,) = session.run(None, {"images": batch.numpy().astype(np.float16)})
    # Half precision keeps ~3 significant digits per operation; through 18 layers that is ~1e-3 of the logits'
    # range (measured 2e-3 with these random BN scales).
    assert logits.dtype == np.float16
    assert relative_error(logits, expected) <= 1e-2
    assert np.isfinite(logits).all()


def test_repvgg_export_fuses_a_copy(tmp_path):
    torch.manual_seed(0)
    batch = model_batch(load_images(), (224, 224))
    model = calibrate_batchnorm(models.get("repvgg_a0", num_classes=10), batch)
    blocks = [m for m in model.modules() if hasattr(m, "fuse_branches")]
    assert blocks and all(not b.fused and b.branch_1x1 is not None for b in blocks)
    with torch.no_grad():
        expected = model(batch)
    result = export_model(model, tmp_path / "repvgg.onnx", batch_size=None)

    ops = [node.op_type for node in onnx.load(result.path).graph.node]
    # Fused: one 3x3 convolution per block. The branch form would add a 1x1 convolution per block and a
    # BatchNorm (or its Mul/Add) per identity branch.
    assert ops.count("Conv") == len(blocks)
    assert "BatchNormalization" not in ops
    (logits,) = run_onnx(result.path, batch.numpy())
    assert relative_error(logits, expected) <= 1e-4
    # Export worked on a copy: the model keeps its branches and its outputs.
    assert all(not b.fused and b.branch_3x3 is not None and b.branch_1x1 is not None for b in blocks)
    assert model.build_residual_branches
    with torch.no_grad():
        assert torch.equal(model(batch), expected)


def test_vision_transformer_exports_with_its_attention(tmp_path):
    """torchvision's ViT in eval mode runs nn.MultiheadAttention's fused fast path, an operator ONNX lacks:
    export traces the plain attention instead (and leaves the fast path on for PyTorch afterwards)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero: all logits 0
    batch = model_batch(load_images(), (32, 32))
    with torch.no_grad():
        expected = model(batch)
    result = export_model(model, tmp_path / "vit.onnx", batch_size=None, input_size=(32, 32))
    (logits,) = run_onnx(result.path, batch.numpy())
    assert relative_error(logits, expected) <= 1e-4
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("opset", [13, 18])
def test_opset_is_honoured_and_metadata_readable(resnet18, tmp_path, opset):
    result = export_model(resnet18, tmp_path / f"opset{opset}.onnx", opset=opset, batch_size=2)
    proto = onnx.load(result.path)
    assert {entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")} == {opset}
    meta = read_metadata(result.path)
    assert meta["opset"] == opset and meta["task"] == "classification" and meta["precision"] == "fp32"
    assert meta["input_name"] == "images" and meta["input_shape"] == [2, 3, 224, 224]
    assert meta["output_names"] == ["logits"] and meta["preprocessing"] is None
    (logits,) = run_onnx(result.path, model_batch(load_images(count=2), (224, 224)).numpy())
    assert logits.shape == (2, 10)


def test_read_metadata_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(RecipeError, match="not exported by super_recipes"):
        read_metadata(path)


@pytest.mark.parametrize("missing", [("onnx",), ("onnxruntime",), ("onnx", "onnxruntime")])
def test_without_the_extra_export_names_it(monkeypatch, tmp_path, missing):
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # import of a None entry raises ImportError
    model = nn.Sequential(nn.Conv2d(3, 2, 1))
    with pytest.raises(RecipeError) as caught:
        export_model(model, tmp_path / "never.onnx")
    message = str(caught.value)
    assert "super-recipes[export]" in message and "\n" not in message
    assert all(module in message for module in missing)
    assert not (tmp_path / "never.onnx").exists()
