"""Segmentation ``predict``: masks at the original size against an independent oracle (the validation pipeline, the
stand-in's logits resized by hand), binary thresholds, every source type and colour order, the overlay files,
preprocessing read from a checkpoint's recipe, and ``python -m super_recipes.predict`` on a segmentation
checkpoint."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model
from super_recipes.segmentation.predict import (
    ImagesSegmentationPrediction,
    SegmentationPrediction,
    SegmentationPredictMixin,
    load_model_for_prediction,
    predict,
    processing_params_from_recipe,
)
from super_recipes.segmentation.transforms import SegNormalize, SegRescale, SegToTensor, as_pair, finalize_pair
from super_recipes.segmentation.visualization import BINARY_PALETTE, IMAGENET_MEAN, IMAGENET_STD, segmentation_palette

CLASS_NAMES = ["background", "sky", "car", "tree"]


@register_model("tiny_seg_standin")
class TinySeg(SegmentationPredictMixin, torch.nn.Module):
    """A 1x1 convolution: logits are a known linear function of the normalised RGB input. It records its inputs
    and stays at the input resolution (or halves it with ``downsample``, as a head without upsampling would)."""

    def __init__(self, num_classes: int = 4, downsample: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        self.num_classes = num_classes
        self.downsample = downsample
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        logits = self.conv(x)
        return F.avg_pool2d(logits, 2) if self.downsample else logits


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth BGR picture (bands of colour plus noise), so classes form regions rather than salt and pepper."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=2)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _validation_input(bgr: np.ndarray, **rescale) -> torch.Tensor:
    """What the validation transforms make of this picture (the datasets read RGB)."""
    pair = as_pair(bgr[:, :, ::-1].copy(), np.zeros(bgr.shape[:2], np.uint8))
    for transform in (SegRescale(**rescale), SegToTensor(), SegNormalize()):
        pair = transform(*pair)
    return finalize_pair(*pair)[0]


def _oracle(model: TinySeg, model_input: torch.Tensor, size: tuple[int, int], threshold: float | None = None):
    with torch.no_grad():
        logits = model.conv(model_input[None])
        if model.downsample:
            logits = F.avg_pool2d(logits, 2)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
    if threshold is not None:
        return (torch.sigmoid(logits[0]) > threshold).long().numpy()
    return logits.argmax(0).numpy()


def test_mask_is_the_argmax_of_the_resized_logits_at_the_original_size():
    model = TinySeg(downsample=True)
    model.set_dataset_processing_params(class_names=CLASS_NAMES, scale_factor=0.5, mean=IMAGENET_MEAN,
                                        std=IMAGENET_STD)
    image = _image(75, 101)
    result = model.predict(image)
    assert isinstance(result, SegmentationPrediction)
    expected_input = _validation_input(image, scale_factor=0.5)
    assert model.inputs[0].shape == (1, 3, 38, 50)  # round(75 / 2), round(101 / 2): SegRescale's own sizes
    torch.testing.assert_close(model.inputs[0][0], expected_input, atol=1e-6, rtol=0)
    expected = _oracle(model, expected_input, (75, 101))
    assert result.mask.dtype == np.int64 and result.mask.shape == (75, 101)
    assert np.array_equal(result.mask, expected)
    assert len(np.unique(expected)) >= 2  # the oracle is not trivially one class
    assert result.image is image and result.class_names == CLASS_NAMES and result.source is None
    fractions = result.class_fractions()
    assert sum(fractions.values()) == pytest.approx(1.0) and set(fractions) <= set(CLASS_NAMES)
    assert list(fractions.values()) == sorted(fractions.values(), reverse=True)


@pytest.mark.parametrize("rescale", [{"short_size": 32}, {"long_size": 64}, {"size": [40, 48]}])
def test_every_rescale_mode_replays_validation(rescale):
    model = TinySeg()
    model.set_dataset_processing_params(**rescale)
    image = _image(50, 90, seed=1)
    result = predict(model, image)
    expected_input = _validation_input(image, **rescale)
    torch.testing.assert_close(model.inputs[0][0], expected_input, atol=1e-6, rtol=0)
    assert np.array_equal(result.mask, _oracle(model, expected_input, (50, 90)))


def test_binary_model_thresholds_the_sigmoid():
    model = TinySeg(num_classes=1, seed=3)
    model.set_dataset_processing_params(class_names=["person"], scale_factor=1.0)
    image = _image(40, 60, seed=2)
    expected_input = _validation_input(image, scale_factor=1.0)
    for threshold in (0.5, 0.7):
        result = model.predict(image, threshold=threshold)
        expected = _oracle(model, expected_input, (40, 60), threshold)
        assert np.array_equal(result.mask, expected) and 0 < expected.mean() < 1
    assert result.binary and result.label_names() == ["background", "person"]
    # Overlay: the foreground alone is tinted (magenta), the background left exactly as it was.
    drawn = result.draw(alpha=0.4)
    changed = np.any(drawn != image, axis=2)
    assert np.array_equal(changed, result.mask == 1)
    magenta_bgr = BINARY_PALETTE[1][::-1].astype(float)
    foreground = result.mask == 1
    np.testing.assert_allclose(drawn[foreground], 0.6 * image[foreground] + 0.4 * magenta_bgr, atol=0.51)


def _write(folder: Path, name: str, image: np.ndarray) -> Path:
    path = folder / name
    assert cv2.imwrite(str(path), image)
    return path


def test_every_source_type_and_colour_order(tmp_path):
    model = TinySeg()
    model.set_dataset_processing_params(class_names=CLASS_NAMES, scale_factor=0.5)
    bgr = _image(48, 64, seed=4)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    reference = model.predict(bgr).mask
    from PIL import Image

    same = [model.predict(rgb, channels="RGB"), model.predict(Image.fromarray(rgb)),
            model.predict(torch.from_numpy(bgr).permute(2, 0, 1)),
            model.predict(torch.from_numpy(bgr).permute(2, 0, 1).float() / 255),
            model.predict(torch.from_numpy(rgb).permute(2, 0, 1), channels="RGB")]
    for result in same:
        assert isinstance(result, SegmentationPrediction) and np.array_equal(result.mask, reference)
    assert not np.array_equal(model.predict(rgb).mask, reference)  # the order matters, so the test means something
    assert np.array_equal(same[0].image, rgb) and same[0].channels == "RGB"
    assert np.array_equal(same[0].draw(), model.predict(bgr).draw()[:, :, ::-1])  # drawn in the order given
    batch = model.predict(np.stack([bgr, bgr]))
    assert isinstance(batch, ImagesSegmentationPrediction) and len(batch) == 2
    assert all(np.array_equal(r.mask, reference) for r in batch)


def test_a_folder_of_png_and_jpeg_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    images = {"a.png": _image(48, 64, 5), "b.jpg": _image(30, 50, 6), "c.png": _image(48, 64, 7)}
    paths = [_write(folder, name, image) for name, image in images.items()]
    (folder / "notes.txt").write_text("not an image")
    model = TinySeg()
    model.set_dataset_processing_params(class_names=CLASS_NAMES, scale_factor=1.0)
    results = model.predict(folder, batch_size=4)
    assert isinstance(results, ImagesSegmentationPrediction) and [r.name for r in results] == ["a", "b", "c"]
    # One forward pass per run of equal input sizes: a, then b, then c (b's size breaks the run).
    assert [len(x) for x in model.inputs] == [1, 1, 1]
    for result, path in zip(results, paths, strict=True):
        on_disk = cv2.imread(str(path))  # a JPEG decodes to its own pixels: compare with what is on disk
        assert result.source == str(path) and np.array_equal(result.image, on_disk)
        assert result.mask.shape == on_disk.shape[:2]
        assert np.array_equal(result.mask, _oracle(model, _validation_input(on_disk, scale_factor=1.0),
                                                   on_disk.shape[:2]))
    model.inputs.clear()
    listed = model.predict([str(paths[0]), str(paths[2])], batch_size=4)
    assert [len(x) for x in model.inputs] == [2]  # equal sizes share a batch
    assert np.array_equal(listed[1].mask, results[2].mask)


def test_save_writes_overlays_that_change_exactly_the_classified_pixels(tmp_path):
    model = TinySeg()
    model.set_dataset_processing_params(class_names=CLASS_NAMES, scale_factor=1.0)
    image = _image(40, 56, seed=8)
    results = model.predict([image, image])
    paths = results.save(tmp_path / "out", save_mask=True)
    assert [p.name for p in paths] == ["image_0.png", "image_1.png"]
    saved = cv2.imread(str(paths[0]))
    mask = results[0].mask
    colours = segmentation_palette(4)[mask][:, :, ::-1].astype(float)  # RGB palette -> BGR
    np.testing.assert_allclose(saved, 0.5 * image + 0.5 * colours, atol=0.51)
    assert np.all(np.any(saved != image, axis=2))  # every pixel has a class here, so every pixel changed
    written_mask = cv2.imread(str(tmp_path / "out" / "image_0_mask.png"), cv2.IMREAD_UNCHANGED)
    assert written_mask.dtype == np.uint8 and np.array_equal(written_mask, mask)
    # A binary model: only the foreground differs from the input.
    binary = TinySeg(num_classes=1, seed=3)
    binary.set_dataset_processing_params(scale_factor=1.0)
    single = binary.predict(image)
    path = single.save(tmp_path / "binary")
    assert path.name == "image_0.png"
    differs = np.any(cv2.imread(str(path)) != image, axis=2)
    assert np.array_equal(differs, single.mask == 1) and differs.any() and not differs.all()


def test_mode_is_restored_and_bad_sources_are_refused(tmp_path):
    model = TinySeg()
    model.train()
    model.predict(_image(16, 16))
    assert model.training
    with pytest.raises(FileNotFoundError, match="No images"):
        model.predict(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.predict(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="Cannot predict"):
        model.predict(42)
    with pytest.raises(ValueError, match="channels"):
        model.predict(_image(8, 8), channels="HSV")
    model.set_dataset_processing_params(scale_factor=0.5, long_size=64)
    with pytest.raises(RecipeError, match="several rescales"):
        model.predict(_image(8, 8))


def test_published_models_default_to_their_evaluation_size():
    model = TinySeg()
    model.eval_size = (32, 64)  # as a published model reports its evaluation input (height, width)
    model.predict(_image(100, 150))
    assert model.inputs[0].shape[-2:] == (43, 64)  # long side 64, aspect ratio kept
    model.inputs.clear()
    model.set_dataset_processing_params(scale_factor=1.0)  # an explicit setting wins
    model.predict(_image(100, 150))
    assert model.inputs[0].shape[-2:] == (100, 150)


def _recipe(transforms: list, **val) -> dict:
    return {"architecture": "tiny_seg_standin", "arch_params": {"num_classes": 4},
            "dataset_params": {"val_dataset_params": {"dataset": "ShapesSegmentationDataset",
                                                      "transforms": transforms, **val}}}


def test_processing_params_from_the_recipe():
    params = processing_params_from_recipe(_recipe([{"SegRescale": {"long_size": 64}}, "SegToTensor",
                                                    {"SegNormalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}]))
    assert params["long_size"] == 64 and params["scale_factor"] is None
    assert params["mean"] == [0.5] * 3 and params["std"] == [0.25] * 3
    assert params["class_names"] == ["background", "circle", "square", "triangle"]  # the dataset class's names
    plain = processing_params_from_recipe(_recipe(["SegToTensor"], class_names=["a", "b"]))
    assert plain["scale_factor"] == 1.0 and plain["mean"] is None and plain["class_names"] == ["a", "b"]
    target = processing_params_from_recipe(_recipe([
        {"_target_": "super_recipes.segmentation.transforms.SegRescale", "scale_factor": 0.25}, "SegNormalize"]))
    assert target["scale_factor"] == 0.25 and target["mean"] == list(IMAGENET_MEAN)
    # No transforms recorded (the loader's defaults were used): only the names, predict's defaults do the rest.
    bare = _recipe([])
    del bare["dataset_params"]["val_dataset_params"]["transforms"]
    assert processing_params_from_recipe(bare) == {"class_names": ["background", "circle", "square", "triangle"]}


def _checkpoint(tmp_path: Path, ema: bool = False) -> tuple[Path, TinySeg]:
    model = TinySeg(seed=11)
    recipe = _recipe([{"SegRescale": {"scale_factor": 0.5}}, "SegToTensor", "SegNormalize"])
    state = {"net": model.state_dict(), "recipe": OmegaConf.to_yaml(OmegaConf.create(recipe)), "epoch": 0}
    if ema:
        state["net"] = TinySeg(seed=12).state_dict()  # the EMA weights are the ones used by default
        state["ema_net"] = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt_best.pth"
    torch.save(state, path)
    return path, model


def test_load_model_for_prediction_rebuilds_model_and_preprocessing(tmp_path):
    path, trained = _checkpoint(tmp_path, ema=True)
    model = load_model_for_prediction(path)
    assert isinstance(model, TinySeg) and not model.training
    assert torch.equal(model.conv.weight, trained.conv.weight)
    assert model.processing_params["scale_factor"] == 0.5 and model.class_names[1] == "circle"
    image = _image(60, 80, seed=9)
    expected = _oracle(trained, _validation_input(image, scale_factor=0.5), (60, 80))
    assert np.array_equal(model.predict(image).mask, expected)
    raw = load_model_for_prediction(path, use_ema=False)
    assert not torch.equal(raw.conv.weight, trained.conv.weight)
    state = torch.load(path, weights_only=True)
    state["ema_net"] = {k: v[:1] for k, v in state["ema_net"].items()}  # weights of another width
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(RecipeError, match=r"(?s)other\.pth.*conv\.weight"):
        load_model_for_prediction(tmp_path / "other.pth")
    torch.save({"net": trained.state_dict()}, tmp_path / "bare.pth")
    with pytest.raises(RecipeError, match="carries no recipe"):
        load_model_for_prediction(tmp_path / "bare.pth")


def test_cli_on_a_segmentation_checkpoint(tmp_path, capsys):
    from super_recipes.predict import main

    path, trained = _checkpoint(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    sources = [_write(folder, "one.png", _image(60, 80, 1)), _write(folder, "two.png", _image(44, 52, 2))]
    out = tmp_path / "overlays"
    status = main(["--checkpoint", str(path), "--source", str(folder), "--output", str(out), "--masks"])
    printed = capsys.readouterr().out.splitlines()
    assert status == 0
    lines = [line for line in printed if line.startswith(str(folder))]
    assert len(lines) == 2
    for line, source in zip(lines, sources, strict=True):
        image = cv2.imread(str(source))
        mask = _oracle(trained, _validation_input(image, scale_factor=0.5), image.shape[:2])
        values, counts = np.unique(mask, return_counts=True)
        top = ["background", "circle", "square", "triangle"][int(values[np.argmax(counts)])]
        assert line.startswith(f"{source}: {top} {100 * counts.max() / mask.size:.1f}%")
        written = cv2.imread(str(out / f"{source.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(written, mask)
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "one_mask.png", "two.png", "two_mask.png"]
    assert "2 mask overlay(s) written" in printed[-1]
    assert main(["--checkpoint", str(path), "--source", str(tmp_path / "nothing.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_tells_segmentation_from_detection_recipes():
    from super_recipes.predict import is_segmentation_recipe

    assert is_segmentation_recipe({"architecture": "stdc1_seg50"})  # registered by super_recipes.segmentation
    assert is_segmentation_recipe({"architecture": "tiny_seg_standin"})  # a class with the mixin
    assert is_segmentation_recipe(_recipe(["SegToTensor"]) | {"architecture": "torch.nn.Identity"})
    assert not is_segmentation_recipe({"architecture": "yolox_n", "dataset_params": {"val_dataset_params": {
        "transforms": [{"DetectionPaddedRescale": {"input_dim": [160, 160]}}, "DetectionStandardize"]}}})


def test_real_model_and_validation_dataset_through_a_checkpoint(tmp_path):
    """A published architecture and the shipped shapes validation set: predict feeds the model exactly the
    dataset's validation item for the same picture, and the mask is that item's logits resized back."""
    from super_recipes import models
    from super_recipes.segmentation.synthetic import ShapesSegmentationDataset

    group = OmegaConf.load(Path(__file__).resolve().parents[1] / "recipes/dataset_params/"
                           "shapes_segmentation_dataset_params.yaml")
    val = OmegaConf.to_container(group.val_dataset_params)
    val["transforms"] = [{"SegRescale": {"scale_factor": 0.75}}, *val["transforms"]]  # and a rescale to undo
    recipe = {"architecture": "stdc1_seg50", "arch_params": {"num_classes": 4},
              "dataset_params": {"val_dataset_params": val}}
    torch.manual_seed(0)
    trained = models.get("stdc1_seg50", num_classes=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": trained.state_dict(), "recipe": OmegaConf.to_yaml(OmegaConf.create(recipe))}, path)
    model = load_model_for_prediction(path)
    assert model.class_names == ["background", "circle", "square", "triangle"] and not model.training
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    dataset = ShapesSegmentationDataset(**{k: v for k, v in val.items() if k != "dataset"})
    picture, _ = dataset.load_sample(3)  # RGB, as the dataset reads it
    result = predict(model, picture, channels="RGB")
    expected_input = dataset[3][0]
    assert expected_input.shape == (3, 48, 48)
    torch.testing.assert_close(seen[0][0], expected_input, atol=1e-5, rtol=0)
    with torch.no_grad():
        logits = F.interpolate(model(expected_input[None]), size=(64, 64), mode="bilinear", align_corners=False)
    assert result.mask.shape == (64, 64) and np.array_equal(result.mask, logits[0].argmax(0).numpy())
