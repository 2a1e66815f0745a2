"""Predicting from exported files and checking conversion before training: ``load_model_for_prediction
("model.onnx")``, ``python -m super_recipes.export`` then ``python -m super_recipes.predict --checkpoint
model.onnx`` on real COCO JPEGs, ``model.export``, and ``ModelConversionCheckCallback``.

Detection predictions are compared on a small detector defined here whose scores are a continuous function of
the image (a random-initialised published detector scores every box alike, so which tied box NMS keeps would be
arbitrary and "the same detections" untestable); it uses the YOLOX post-processing callback, as yolox_* do.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from super_recipes import models  # noqa: E402
from super_recipes.callbacks.conversion_check import check_conversion  # noqa: E402
from super_recipes.detection.predict import DetectionPredictMixin  # noqa: E402
from super_recipes.detection.predict import load_model_for_prediction as load_detector  # noqa: E402
from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback  # noqa: E402
from super_recipes.errors import RecipeError  # noqa: E402
from super_recipes.export.runtime import OnnxClassifier, OnnxDetector, OnnxSegmenter  # noqa: E402
from super_recipes.segmentation.predict import load_model_for_prediction as load_segmenter  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    folder = TINYCOCO / "images" / "val2017"
    if not folder.is_dir():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    target = tmp_path_factory.mktemp("jpegs")
    return [Path(shutil.copy(f, target / f.name)) for f in sorted(folder.glob("*.jpg"))[:3]]


class ContentDetector(DetectionPredictMixin, torch.nn.Module):
    """YOLOX-format eval output ``[B, N, 5 + C]`` (cx, cy, w, h pixels, objectness, class scores) from two seeded
    convolutions over the image: one cell per 16 pixels, boxes around the cell, scores that vary with content."""

    def __init__(self, num_classes: int = 3, input_dim: tuple[int, int] = (160, 192)):
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.features = torch.nn.Conv2d(3, 8, 16, stride=16)
        self.head = torch.nn.Conv2d(8, 5 + num_classes, 1)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
        self.processing_params = {"input_dim": input_dim, "pad_value": 114, "standardize": 255.0,
                                  "class_names": ["cat", "dog", "bird"][:num_classes]}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.relu(self.features(images) * 4.0))
        batch, channels, h, w = out.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=out.dtype), torch.arange(w, dtype=out.dtype), indexing="ij")
        cx = (xs + torch.sigmoid(out[:, 0])) * 16.0
        cy = (ys + torch.sigmoid(out[:, 1])) * 16.0
        size = 24.0 * torch.exp(out[:, 2:4].clamp(-2, 2))
        decoded = torch.cat((cx[:, None], cy[:, None], size, torch.sigmoid(out[:, 4:] * 8.0)), dim=1)
        return decoded.flatten(2).transpose(1, 2)

    def get_post_prediction_callback(self, conf: float, iou: float, max_predictions: int = 300
                                     ) -> YoloXPostPredictionCallback:
        return YoloXPostPredictionCallback(conf=conf, iou=iou, max_predictions=max_predictions)


def _same_detections(ours, theirs) -> int:
    """Per image: the same labels and scores (1e-5), boxes within 1e-3 input pixels (mapped to the image)."""
    found = 0
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b), (a.source, len(a), len(b))
        scale = min(160 / a.image.shape[0], 192 / a.image.shape[1])
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3 / scale, rtol=0)
        found += len(a)
    return found


@pytest.mark.parametrize("options", [
    {"batch_size": 1},  # NMS in Python over the file's boxes/scores; predict's batches split into ones
    {"batch_size": None, "preprocessing": True, "postprocessing": True, "output_layout": "batched"},
    {"batch_size": 2, "preprocessing": True, "postprocessing": True, "output_layout": "flat"},
], ids=["raw", "batched", "flat"])
def test_exported_detector_predicts_what_the_model_predicts(jpegs, tmp_path, options):
    model = ContentDetector().eval()
    conf, iou = 0.35, 0.5
    path = tmp_path / "detector.onnx"
    model_options = {"conf": conf, "iou": iou, "max_predictions": 50} if options.get("postprocessing") else {}
    models.export(model, path, **options, **model_options)
    exported = load_detector(path)
    assert isinstance(exported, OnnxDetector) and exported.class_names == ["cat", "dog", "bird"]
    sources = [str(p) for p in jpegs]
    expected = model.predict(sources, conf=conf, iou=iou, max_predictions=50, batch_size=3)
    got = exported.predict(sources, conf=conf, iou=iou, max_predictions=50, batch_size=3)
    assert _same_detections(expected, got) >= 3  # detections to compare, not agreement on nothing


def _shapes_yolox_checkpoint(tmp_path: Path) -> Path:
    from super_recipes.config.compose import compose_recipe
    from super_recipes.train_from_recipe import run_recipe

    cfg, source = compose_recipe("shapes_yolox", [
        "epochs=1", "training_hyperparams.max_train_batches=1", "training_hyperparams.max_valid_batches=1",
        "batch_size=4", "val_batch_size=4", "num_workers=0", f"ckpt_root_dir={tmp_path / 'ckpt'}",
        f"dataset_params.train_dataset_params.data_dir={tmp_path / 'shapes'}",
        f"dataset_params.val_dataset_params.data_dir={tmp_path / 'shapes'}",
        "dataset_params.train_dataset_params.num_images=8", "dataset_params.val_dataset_params.num_images=4",
        "training_hyperparams.lr_warmup_steps=1", "training_hyperparams.silent_mode=true", "device=cpu"])
    run_recipe(cfg, source)
    return tmp_path / "ckpt" / "shapes_yolox" / "ckpt_latest.pth"


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_export_and_predict_commands_on_a_real_run(jpegs, tmp_path):
    checkpoint = _shapes_yolox_checkpoint(tmp_path)
    onnx_file = tmp_path / "yolox.onnx"
    done = _cli("super_recipes.export", "--checkpoint", str(checkpoint), "--output", str(onnx_file),
                "--batch-size", "dynamic", "--preprocessing", "--postprocessing", "--conf", "0.0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "input 'images' uint8 ['batch', 3," in done.stdout
    assert "outputs num_predictions, boxes, scores, labels" in done.stdout
    exported = load_detector(onnx_file)
    torch_model = load_detector(checkpoint)
    assert exported.class_names == torch_model.processing_params["class_names"]
    assert exported.processing_params["input_dim"] == list(torch_model.processing_params["input_dim"])
    out = tmp_path / "annotated"
    done = _cli("super_recipes.predict", "--checkpoint", str(onnx_file), "--source", str(jpegs[0].parent),
                "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if "detections" in line]) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in jpegs)
    missing = _cli("super_recipes.predict", "--checkpoint", str(tmp_path / "none.onnx"), "--source", str(jpegs[0]),
                   cwd=tmp_path)
    assert missing.returncode == 1 and "Exported model not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = _cli("super_recipes.export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "x.onnx"),
               "--batch-size", "two", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: --batch-size takes a number or 'dynamic'")


def _segmentation_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    group = OmegaConf.load(REPO_ROOT / "recipes/dataset_params/shapes_segmentation_dataset_params.yaml")
    val = OmegaConf.to_container(group.val_dataset_params)
    val["transforms"] = [{"SegRescale": {"size": [96, 128]}}, *val["transforms"]]
    recipe = {"architecture": "stdc1_seg50", "arch_params": {"num_classes": 4},
              "dataset_params": {"val_dataset_params": val}}
    torch.manual_seed(0)
    trained = models.get("stdc1_seg50", num_classes=4).eval()
    path = tmp_path / "ckpt_best.pth"
    torch.save({"net": trained.state_dict(), "recipe": OmegaConf.to_yaml(OmegaConf.create(recipe))}, path)
    return path, trained


@pytest.mark.parametrize("preprocessing", [False, True], ids=["float-input", "uint8-input"])
def test_exported_segmenter_predicts_what_the_checkpoint_predicts(jpegs, tmp_path, preprocessing):
    from super_recipes.export.__main__ import main as export_main

    checkpoint, _ = _segmentation_checkpoint(tmp_path)
    onnx_file = tmp_path / "stdc.onnx"
    args = ["--checkpoint", str(checkpoint), "--output", str(onnx_file), "--input-size", "96", "128"]
    assert export_main(args + (["--preprocessing"] if preprocessing else [])) == 0
    exported, torch_model = load_segmenter(onnx_file), load_segmenter(checkpoint)
    assert isinstance(exported, OnnxSegmenter) and exported.class_names == torch_model.class_names
    for jpeg in jpegs:
        expected, got = torch_model.predict(str(jpeg)), exported.predict(str(jpeg))
        assert got.mask.shape == expected.mask.shape == got.image.shape[:2]
        agreement = float((got.mask == expected.mask).mean())
        # fp32 logits agree to ~1e-5; with uint8 input, predict's resized pixels are rounded to whole values
        # first, which moves the few pixels whose two best classes are within that rounding.
        assert agreement >= (0.9999 if not preprocessing else 0.99), agreement


def test_model_export_method_and_classifier_logits(tmp_path):
    torch.manual_seed(0)
    model = models.get("resnet18", num_classes=5).eval()
    result = model.export(tmp_path / "r18.onnx", batch_size=None, input_size=(64, 64))
    assert result.input_shape == ["batch", 3, 64, 64] and result.output_names == ["logits"]
    wrapper = load_detector(tmp_path / "r18.onnx")  # the file's own task decides: a classifier, logits when called
    assert isinstance(wrapper, OnnxClassifier) and hasattr(wrapper, "predict")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
    got = wrapper(images)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4


def test_conversion_check_reports_a_graph_that_froze_a_python_value(tmp_path):
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + random.random()  # traced as the constant drawn at export

    with pytest.raises(RecipeError, match=r"(?s)disagree on a batch of 2.*'logits': \d+ of \d+ values differ"):
        check_conversion(Noisy(), tmp_path / "noisy.onnx", input_size=(32, 32))
    torch.manual_seed(0)
    summary = check_conversion(models.get("repvgg_a0", num_classes=4), tmp_path / "rv.onnx", input_size=(64, 64),
                               dynamic_batch=True)  # fused in the file, unfused in PyTorch: equal to 1e-3
    assert "matches PyTorch" in summary


def _image_loader(seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(16, 3, 8, 8, generator=generator), torch.arange(16) % 10
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)


def test_conversion_check_callback_runs_before_the_first_step(tmp_path):
    from super_recipes import Trainer

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.flatten(1)) * (1.0 + random.random())

    params = {"max_epochs": 1, "initial_lr": 0.1, "loss": "CrossEntropyLoss", "metric_to_watch": "Accuracy",
              "train_metrics_list": ["Accuracy"], "valid_metrics_list": ["Accuracy"],
              "phase_callbacks": [{"ModelConversionCheckCallback": {"input_dimensions": [3, 8, 8]}}]}
    Trainer("good", tmp_path, device="cpu").train(
        model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)), training_params=params,
        train_loader=_image_loader(0), valid_loader=_image_loader(1))
    assert list((tmp_path / "good").glob("Sequential_conversion_check.onnx"))
    assert list((tmp_path / "good").glob("ckpt_*.pth"))
    with pytest.raises(RecipeError, match="ModelConversionCheckCallback"):
        Trainer("bad", tmp_path, device="cpu").train(model=Noisy(), training_params=params,
                                                      train_loader=_image_loader(0), valid_loader=_image_loader(1))
    assert not list((tmp_path / "bad").glob("ckpt_*.pth"))  # stopped before any step


def test_without_the_extra_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RecipeError, match=r"super-recipes\[export\]") as err:
        load_detector(tmp_path / "model.onnx")
    assert "\n" not in str(err.value)
