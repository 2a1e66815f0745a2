"""Classifying images: ``predict(model, source)`` against the recipe's own validation pipeline on real JPEGs, a
checkpoint of a real (1-step) run through ``python -m super_recipes.predict``, and the exported ``.onnx`` file
giving the same probabilities."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from super_recipes import models
from super_recipes.models.predict import (
    ClassificationPrediction,
    ImagesClassificationPrediction,
    load_model_for_prediction,
    predict,
    processing_params_from_recipe,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    folder = TINYCOCO / "images" / "val2017"
    if not folder.is_dir():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    target = tmp_path_factory.mktemp("jpegs")
    return [Path(shutil.copy(f, target / f.name)) for f in sorted(folder.glob("*.jpg"))[:3]]


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.get("resnet18", num_classes=4).eval()
    model.processing_params = {"resize": 72, "crop": 64, "mean": MEAN, "std": STD,
                               "class_names": ["cat", "dog", "bird", "fish"]}
    return model


def test_predict_prepares_images_as_the_validation_transforms(jpegs):
    model = _classifier()
    result = predict(model, [str(p) for p in jpegs])
    assert isinstance(result, ImagesClassificationPrediction) and len(result) == 3
    # The recipe's validation pipeline on the PIL-decoded file (what ImageFolderDataset feeds the model).
    pipeline = v2.Compose([v2.PILToTensor(), v2.Resize(72), v2.CenterCrop(64), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(MEAN, STD)])
    batch = torch.stack([pipeline(Image.open(p).convert("RGB")) for p in jpegs])
    with torch.no_grad():
        expected = model(batch).softmax(1).numpy()
    for prediction, probabilities in zip(result, expected, strict=True):
        # JPEG decoders (OpenCV here, PIL there) may differ by a level on a few pixels.
        np.testing.assert_allclose(prediction.probabilities, probabilities, atol=2e-3)
        assert prediction.class_id == int(probabilities.argmax())
        assert prediction.label_name() == ["cat", "dog", "bird", "fish"][prediction.class_id]
        assert abs(sum(p for _, p in prediction.top(4)) - 1.0) < 1e-5
    single = predict(model, np.asarray(Image.open(jpegs[0]).convert("RGB")), channels="RGB")
    assert isinstance(single, ClassificationPrediction)
    np.testing.assert_allclose(single.probabilities, expected[0], atol=2e-3)


def test_processing_params_from_a_recipe():
    recipe = {"architecture": "resnet50", "dataset_params": {"val_dataset_params": {
        "dataset": "ImageFolderDataset", "class_names": ["a", "b"],
        "transforms": [{"Resize": {"size": 256}}, {"CenterCrop": {"size": 224}}, "ToFloatTensor",
                       {"Normalize": {"mean": list(MEAN), "std": list(STD)}}]}}}
    params = processing_params_from_recipe(recipe)
    assert params["resize"] == 256 and params["crop"] == 224 and params["mean"] == MEAN
    assert params["class_names"] == ["a", "b"]
    shapes = processing_params_from_recipe({"dataset_params": {"val_dataset_params": {
        "dataset": "ShapesClassificationDataset", "transforms": ["ToFloatTensor"]}}})
    assert "resize" not in shapes and shapes["mean"] == (0.0, 0.0, 0.0)
    assert shapes["class_names"][:2] == ["circle", "square"]


def test_predict_command_on_a_real_classification_run(jpegs, tmp_path, capsys):
    from super_recipes.config.compose import compose_recipe
    from super_recipes.predict import is_classification_recipe, main
    from super_recipes.train_from_recipe import run_recipe

    cfg, source = compose_recipe("shapes_resnet", [
        "training_hyperparams.max_epochs=1", "training_hyperparams.max_train_batches=1",
        "training_hyperparams.max_valid_batches=1", f"ckpt_root_dir={tmp_path / 'ckpt'}",
        "training_hyperparams.silent_mode=true", "device=cpu"])
    run_recipe(cfg, source)
    checkpoint = tmp_path / "ckpt" / "shapes_resnet" / "ckpt_best.pth"
    model = load_model_for_prediction(checkpoint)
    assert not model.training and model.processing_params["class_names"][0] == "circle"
    capsys.readouterr()
    out = tmp_path / "labelled"
    assert main(["--checkpoint", str(checkpoint), "--source", str(jpegs[0].parent), "--output", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(jpegs[0].parent))]
    expected = predict(model, str(jpegs[0].parent))
    assert len(lines) == 3
    for line, prediction in zip(lines, expected, strict=True):
        assert line.startswith(f"{prediction.source}: {prediction.label_name()} {100 * prediction.confidence:.1f}%")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in jpegs)
    assert is_classification_recipe({"architecture": "resnet18"})
    assert not is_classification_recipe({"architecture": "yolox_n"})
    assert not is_classification_recipe({"architecture": "stdc1_seg50"})


def test_exported_classifier_gives_the_same_probabilities(jpegs, tmp_path):
    pytest.importorskip("onnxruntime")
    model = _classifier()
    for preprocessing in (False, True):
        path = tmp_path / f"classifier_{preprocessing}.onnx"
        model.export(path, batch_size=None, input_size=(64, 64), image_size=(64, 64) if preprocessing else None,
                     preprocessing=preprocessing)
        exported = load_model_for_prediction(path)
        assert exported.class_names == ["cat", "dog", "bird", "fish"]
        got = exported.predict([str(p) for p in jpegs])
        if not preprocessing:  # the same resize 72 + crop 64 before the graph: the same numbers
            expected = predict(model, [str(p) for p in jpegs])
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        else:  # the graph takes 64x64 uint8 images (predict resizes each image to that), then does what the
            # validation transforms do to such an image: short side to 72 (bilinear, no antialiasing in ONNX
            # Resize), centre crop 64, normalise.
            for a, jpeg in zip(got, jpegs, strict=True):
                image = torch.from_numpy(cv2.imread(str(jpeg))[:, :, ::-1].copy()).permute(2, 0, 1)
                resized = v2.functional.resize(image, [64, 64], antialias=True)  # uint8 in, uint8 out
                upscaled = torch.nn.functional.interpolate(resized.float()[None], size=(72, 72), mode="bilinear")
                batch = v2.functional.normalize(upscaled[..., 4:68, 4:68] / 255.0, MEAN, STD)
                with torch.no_grad():
                    expected = model(batch).softmax(1)[0].numpy()
                np.testing.assert_allclose(a.probabilities, expected, atol=1e-5)
