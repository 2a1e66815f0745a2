"""``model.predict(...)`` / ``predict(model, ...)`` and ``python -m super_recipes.predict`` on real JPEGs: every
source type, the letterbox inverse, drawings written, and the CLI on a checkpoint of a real (1-step) run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from super_recipes.detection.predict import (
    DetectionPredictMixin,
    ImageDetectionPrediction,
    ImagesDetectionPrediction,
    load_model_for_prediction,
    predict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
# Input-pixel boxes the fake detector always returns: x1, y1, x2, y2, confidence, class.
FIXED_ROWS = torch.tensor([[16.0, 24.0, 120.0, 96.0, 0.9, 2.0], [200.0, 150.0, 250.0, 230.0, 0.6, 0.0],
                           [5.0, 5.0, 9.0, 9.0, 0.1, 1.0]])


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    """Three real COCO val JPEGs of different sizes, copied so nothing is ever written next to the originals."""
    folder = TINYCOCO / "images" / "val2017"
    if not folder.is_dir():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    target = tmp_path_factory.mktemp("jpegs")
    files = sorted(folder.glob("*.jpg"))[:3]
    return [Path(shutil.copy(f, target / f.name)) for f in files]


class FixedDetector(DetectionPredictMixin, torch.nn.Module):
    """A detector whose post-processed output is known: FIXED_ROWS for every image, filtered by ``conf``.
    It records the batches it was given, so the preprocessing can be checked too."""

    def __init__(self, input_dim=(256, 320)):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.processing_params = {"input_dim": input_dim, "pad_value": 114, "standardize": True,
                                  "class_names": ["cat", "dog", "bird"]}
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.clone())
        return FIXED_ROWS.expand(images.shape[0], -1, -1)

    def get_post_prediction_callback(self, conf: float, iou: float, max_predictions: int = 300):
        return lambda out: [rows[rows[:, 4] >= conf] for rows in out]


def _letterbox_scale(h: int, w: int, input_dim=(256, 320)) -> float:
    return min(input_dim[0] / h, input_dim[1] / w)


def test_boxes_map_back_to_original_pixels_exactly(jpegs):
    model = FixedDetector()
    image = cv2.imread(str(jpegs[0]))
    result = model.predict(str(jpegs[0]), conf=0.25)
    assert isinstance(result, ImageDetectionPrediction) and len(result) == 2  # the 0.1 row is under conf
    h, w = image.shape[:2]
    scale = _letterbox_scale(h, w)
    expected = np.clip(FIXED_ROWS[:2, :4].numpy() / scale, 0, [w, h, w, h])
    np.testing.assert_allclose(result.boxes, expected, rtol=1e-6)
    np.testing.assert_allclose(result.scores, [0.9, 0.6], rtol=1e-6)
    assert result.labels.tolist() == [2, 0] and result.label_names() == ["bird", "cat"]
    assert result.source == str(jpegs[0]) and np.array_equal(result.image, image)


def test_input_is_the_validation_preprocessing(jpegs):
    """The model sees what the COCO validation transforms produce for the same file (letterbox, pad 114, /255)."""
    from super_recipes.detection.datasets import load_image
    from super_recipes.detection.sample import DetectionSample
    from super_recipes.detection.transforms import DetectionPaddedRescale, DetectionStandardize, sample_to_item

    model = FixedDetector()
    model.predict(str(jpegs[1]))
    image = load_image(str(jpegs[1]))
    sample = DetectionStandardize()(DetectionPaddedRescale((256, 320))(DetectionSample(image=image)))
    expected = sample_to_item(sample)[0]
    assert torch.equal(model.inputs[0][0], expected)


def test_every_source_type_gives_the_same_detections(jpegs):
    model = FixedDetector()
    arrays = [cv2.imread(str(p)) for p in jpegs]
    single = model.predict(str(jpegs[0]))
    by_path = model.predict(Path(jpegs[0]))
    by_array = predict(model, arrays[0])
    # The dataset convention for tensors: CHW, BGR, 0..255 (uint8) or [0, 1] floats.
    by_tensor = model.predict(torch.from_numpy(arrays[0]).permute(2, 0, 1))
    by_float_tensor = model.predict(torch.from_numpy(arrays[0]).permute(2, 0, 1).float() / 255)
    by_pil = model.predict(Image.fromarray(np.ascontiguousarray(arrays[0][:, :, ::-1])))  # PIL is RGB
    assert np.array_equal(by_pil.image, arrays[0])  # kept in the BGR order the model was trained on
    for other in (by_path, by_array, by_tensor, by_float_tensor, by_pil):
        assert isinstance(other, ImageDetectionPrediction)
        np.testing.assert_allclose(other.boxes, single.boxes, rtol=1e-6)
    folder = model.predict(jpegs[0].parent)
    listed = model.predict([str(p) for p in jpegs])
    mixed = model.predict([str(jpegs[0]), arrays[1], arrays[2]])
    batched = model.predict(torch.from_numpy(np.stack([arrays[0]] * 2)).permute(0, 3, 1, 2), batch_size=1)
    for many, count in ((folder, 3), (listed, 3), (mixed, 3), (batched, 2)):
        assert isinstance(many, ImagesDetectionPrediction) and len(many) == count
        np.testing.assert_allclose(many[0].boxes, single.boxes, rtol=1e-6)
    for i, path in enumerate(jpegs):
        h, w = arrays[i].shape[:2]
        np.testing.assert_allclose(listed[i].boxes[0], FIXED_ROWS[0, :4].numpy() / _letterbox_scale(h, w),
                                   rtol=1e-6)
        assert folder[i].source == str(path) and mixed[i].image.shape == arrays[i].shape
    assert [p.name for p in folder] == [p.stem for p in jpegs]


def test_bad_sources_are_refused(jpegs, tmp_path):
    model = FixedDetector()
    with pytest.raises(FileNotFoundError, match="No images"):
        model.predict(tmp_path)
    with pytest.raises(Exception, match="does not exist"):
        model.predict(str(tmp_path / "missing.jpg"))
    with pytest.raises(TypeError, match="Cannot predict"):
        model.predict(42)


def _assert_boxes_drawn(saved: np.ndarray, original: np.ndarray, boxes: np.ndarray) -> None:
    """``saved`` is ``original`` with a solid outline on every box, and unchanged away from the boxes.

    The reference is the undrawn image through the same JPEG encoder (cv2's default quality), so re-encoding
    alone accounts for ~0 difference: an outline is a line of one colour, far (> 30 levels) from what it covers.
    """
    baseline = cv2.imdecode(cv2.imencode(".jpg", original)[1], cv2.IMREAD_COLOR)
    keep_out = np.zeros(original.shape[:2], dtype=bool)
    colours = []
    for x1, y1, x2, y2 in boxes:
        left, top, right, bottom = round(x1), round(y1), round(x2) - 1, round(y2) - 1  # the outline's pixels
        # the right and bottom edges (the label sits at the top-left corner), corners left out
        edge = np.concatenate([saved[top + 4:bottom - 3, right], saved[bottom, left + 4:right - 3]]).astype(float)
        under = np.concatenate([baseline[top + 4:bottom - 3, right], baseline[bottom, left + 4:right - 3]])
        assert np.abs(edge - under).mean() > 30, (x1, y1, x2, y2)
        assert edge.std(axis=0).max() < 15, (x1, y1, x2, y2)
        colours.append(np.median(edge, axis=0))
        keep_out[max(top - 30, 0):bottom + 10, max(left - 10, 0):right + 10] = True
    assert np.abs(saved[~keep_out].astype(float) - baseline[~keep_out]).mean() < 1.0
    if len(colours) == 2:
        assert np.abs(colours[0] - colours[1]).max() > 60  # two classes, two colours


def test_save_writes_annotated_images(jpegs, tmp_path):
    model = FixedDetector()
    results = model.predict([str(p) for p in jpegs] + [str(jpegs[0])])
    paths = results.save(tmp_path / "out")
    assert len(paths) == 4 and len({p.name for p in paths}) == 4  # the repeated file gets its own name
    for path, result, source in zip(paths, results, [*jpegs, jpegs[0]], strict=True):
        drawn, original = cv2.imread(str(path)), cv2.imread(str(source))
        assert drawn.shape == original.shape and len(result) == 2 and set(result.labels.tolist()) == {0, 2}
        _assert_boxes_drawn(drawn, original, result.boxes)
    single = model.predict(cv2.imread(str(jpegs[1])))
    one = single.save(tmp_path / "one")
    assert one.name == "image_0.jpg" and one.is_file()
    _assert_boxes_drawn(cv2.imread(str(one)), cv2.imread(str(jpegs[1])), single.boxes)
    # lossless when asked for: exactly the drawing
    png = single.save(tmp_path / "one", "drawn.png")
    assert np.array_equal(cv2.imread(str(png)), single.draw())


def test_untrained_yolox_predicts_inside_the_image_and_keeps_its_mode(jpegs):
    from super_recipes import models

    model = models.get("yolox_n", num_classes=80)
    model.set_dataset_processing_params(input_dim=(192, 192), class_names=None)
    model.train()
    results = predict(model, [str(p) for p in jpegs], conf=0.0, iou=0.7)
    assert model.training  # restored after inference
    for result in results:
        h, w = result.image.shape[:2]
        assert len(result) > 0
        assert (result.boxes >= 0).all()
        assert (result.boxes[:, [0, 2]] <= w).all() and (result.boxes[:, [1, 3]] <= h).all()


def test_cli_on_a_checkpoint_of_a_real_run(jpegs, tmp_path):
    from super_recipes.config.compose import compose_recipe
    from super_recipes.train_from_recipe import run_recipe

    cfg, source = compose_recipe("shapes_yolox", [
        "epochs=1", "training_hyperparams.max_train_batches=1", "training_hyperparams.max_valid_batches=1",
        "batch_size=4", "val_batch_size=4", "num_workers=0", f"ckpt_root_dir={tmp_path / 'ckpt'}",
        f"dataset_params.train_dataset_params.data_dir={tmp_path / 'shapes'}",
        f"dataset_params.val_dataset_params.data_dir={tmp_path / 'shapes'}",
        "dataset_params.train_dataset_params.num_images=16", "dataset_params.val_dataset_params.num_images=8",
        "training_hyperparams.lr_warmup_steps=1", "training_hyperparams.silent_mode=true", "device=cpu"])
    run_recipe(cfg, source)
    checkpoint = tmp_path / "ckpt" / "shapes_yolox" / "ckpt_latest.pth"
    model = load_model_for_prediction(checkpoint)
    assert model.processing_params["class_names"] == ["circle", "square", "triangle", "star"]
    assert tuple(model.processing_params["input_dim"]) == tuple(cfg.dataset_params.val_dataset_params.input_dim)
    assert not model.training
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = tmp_path / "annotated"
    done = subprocess.run([sys.executable, "-m", "super_recipes.predict", "--checkpoint", str(checkpoint),
                           "--source", str(jpegs[0].parent), "--output", str(out), "--conf", "0.0"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "detections" in line]
    assert len(lines) == 3 and all(str(jpegs[0].parent) in line for line in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in jpegs)
    bad = subprocess.run([sys.executable, "-m", "super_recipes.predict", "--checkpoint", str(tmp_path / "no.pth"),
                          "--source", str(jpegs[0])], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert bad.returncode == 1 and "Checkpoint not found" in bad.stderr
