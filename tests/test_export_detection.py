"""ONNX export of detectors (``super_recipes.export``), run by ONNX Runtime on real tinycoco images: raw boxes and
scores of every family against the PyTorch model through its callback's ``boxes_and_scores``; the letterbox
inside the graph against a letterbox written here; :class:`BatchedSelection` (the graph's post-processing) against
:func:`select_detections` in both output layouts; a whole YOLOX graph with its post-processing.

Random init makes poor test subjects as built: BN statistics at mean 0 / variance 1 let YOLOX's activations
vanish (every output a constant) and PP-YOLOE's prediction convolutions start at zero (constant boxes and
scores, a tie everywhere). :func:`randomised` gives those convolutions small random weights and takes BN
statistics from the real images, so outputs depend on the image, scores are distinct and fusion folds real BN.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from super_recipes import models  # noqa: E402
from super_recipes.detection.postprocessing import SelectionSettings, select_detections  # noqa: E402
from super_recipes.detection.predict import _post_processor  # noqa: E402
from super_recipes.export import export_model  # noqa: E402
from super_recipes.export.graph import BatchedSelection  # noqa: E402
from super_recipes.export.onnx_export import read_metadata  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
SIZE = 320
FAMILIES = ["yolox_n", "ppyoloe_s", "yolo_nas_s", "ssd_lite_mobilenet_v2"]


def load_bgr(shape: tuple[int, int] | None = None, count: int = 3) -> list[torch.Tensor]:
    """``count`` real tinycoco images as uint8 ``[3, H, W]`` in BGR, the detection datasets' order (cv2)."""
    folder = TINYCOCO / "images" / "train2017"
    if not folder.is_dir():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    images = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as file:
            rgb = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
        if shape is None or tuple(rgb.shape[-2:]) == tuple(shape):
            images.append(rgb.flip(0).contiguous())
        if len(images) == count:
            return images
    pytest.skip(f"fewer than {count} tinycoco images of shape {shape}")


def letterbox(image: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """The validation letterbox (``DetectionPaddedRescale``): scale = min(size/h, size/w), bilinear resize (no
    antialiasing, the float arithmetic an ONNX Resize does), the image top-left on a canvas of 114, 0..255."""
    h, w = image.shape[-2:]
    scale = min(size / h, size / w)
    new_h, new_w = max(round(h * scale), 1), max(round(w * scale), 1)
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.full((3, size, size), 114.0)
    canvas[:, :new_h, :new_w] = resized
    return canvas


def model_input(images: list[torch.Tensor]) -> torch.Tensor:
    """Letterboxed BGR pixels / 255: what every family's validation feeds (``standardize: 255``)."""
    return torch.stack([letterbox(image) for image in images]) / 255.0


def randomised(name: str, batch: torch.Tensor, seed: int = 0) -> nn.Module:
    """``models.get(name)`` seeded, zero-initialised weights made small random ones, BN statistics from
    ``batch`` (one train-mode pass with momentum 1) and random BN affine parameters; in eval mode."""
    torch.manual_seed(seed)
    model = models.get(name, num_classes=80)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, 0.01, generator=generator)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0
                if module.affine:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                    module.bias.normal_(0.0, 0.1, generator=generator)
        model.train()(batch)
        for module in model.modules():
            # A channel the three images barely excite gets a near-zero variance, hence a gain up to
            # 1/sqrt(eps) (~300) that amplifies float32 rounding noise far beyond a trained network's; a floor of
            # 0.01 on activations of unit scale caps it at 10.
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_var.clamp_(min=0.01)
    return model.eval()


def run_onnx(path: str | Path, array: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})


def torch_boxes_and_scores(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch side: the model's eval output through its family callback's ``boxes_and_scores``."""
    with torch.no_grad():
        return _post_processor(model, 0.25, 0.7, 100).boxes_and_scores(model(batch))


def assert_close_to_pytorch(model: nn.Module, batch: torch.Tensor, boxes: np.ndarray, scores: np.ndarray) -> None:
    """ONNX Runtime's boxes and scores against PyTorch's: scores within 1e-4, boxes within 1e-3 px plus 2e-5 of
    the largest coordinate. The relative part is float32 rounding through these random networks: on coordinates
    of 300-580 px ONNX Runtime and PyTorch differ by up to ~4e-3 px, and PyTorch float32 and float64 (the same
    model run in double precision, measured when this test was written) by up to ~2e-3 px: rounding, not export.
    A wrong letterbox, channel order or decoding moves boxes by pixels."""
    expected_boxes, expected_scores = torch_boxes_and_scores(model, batch)
    assert boxes.shape == tuple(expected_boxes.shape) and scores.shape == tuple(expected_scores.shape)
    box_tolerance = 1e-3 + 2e-5 * float(expected_boxes.abs().max())
    assert np.abs(boxes - expected_boxes.numpy()).max() <= box_tolerance
    assert np.abs(scores - expected_scores.numpy()).max() <= 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_raw_boxes_and_scores_match_pytorch(name, tmp_path):
    images = load_bgr(count=3)  # 427x640, 640x480, 352x230: letterboxed differently
    batch = model_input(images)
    model = randomised(name, batch)
    result = export_model(model, tmp_path / f"{name}.onnx", input_size=(SIZE, SIZE), batch_size=None)
    assert result.output_names == ["boxes", "scores"] and result.task == "detection"
    assert result.selection is not None  # the family's settings, for whoever runs NMS on these outputs
    boxes, scores = run_onnx(result.path, batch.numpy())
    assert scores.shape[0] == 3 and scores.shape[2] == 80
    # The file is fused (YOLO-NAS, PP-YOLOE blocks), the PyTorch model is not: float rounding apart, the same.
    assert_close_to_pytorch(model, batch, boxes, scores)
    # Not a constant graph: the three images give different outputs.
    assert not np.allclose(scores[0], scores[1]) and not np.allclose(boxes[0], boxes[2])


@pytest.fixture(scope="module")
def yolox(tmp_path_factory) -> dict:
    """A randomised YOLOX-N, 480x640 BGR images, and its raw export with the letterbox in the graph."""
    images = load_bgr((480, 640), count=3)
    batch = model_input(images)
    model = randomised("yolox_n", batch)
    folder = tmp_path_factory.mktemp("yolox")
    raw = export_model(model, folder / "raw_pre.onnx", input_size=(SIZE, SIZE), image_size=(480, 640),
                       preprocessing=True, batch_size=None)
    return {"model": model, "images": torch.stack(images), "batch": batch, "folder": folder, "raw_pre": raw}


def test_letterbox_in_graph_matches_the_oracle(yolox):
    result = yolox["raw_pre"]
    meta = read_metadata(result.path)
    assert meta["input_dtype"] == "uint8" and meta["input_shape"] == ["batch", 3, 480, 640]
    assert meta["preprocessing"]["letterbox_scale"] == pytest.approx(0.5)
    boxes, scores = run_onnx(result.path, yolox["images"].numpy())
    # Raw outputs stay in the model's (letterboxed) pixels; only the post-processing maps them back.
    assert_close_to_pytorch(yolox["model"], yolox["batch"], boxes, scores)


def test_preprocessing_module_is_the_letterbox(yolox, tmp_path):
    """The graph's preprocessing alone (uint8 480x640 BGR -> 320x320 model input) against the letterbox above."""
    import warnings

    from super_recipes.export.graph import Preprocessing, PreprocessingModule

    spec = Preprocessing(**{**read_metadata(yolox["raw_pre"].path)["preprocessing"]})
    assert spec.divide == 255.0 and spec.pad_value == 114.0 and tuple(spec.model_hw) == (SIZE, SIZE)
    path = tmp_path / "letterbox.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PreprocessingModule(spec), (yolox["images"][:1],), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    (pixels,) = run_onnx(path, yolox["images"].numpy())
    # The same bilinear arithmetic on both sides: float32 rounding only (values in [0, 1]).
    np.testing.assert_allclose(pixels, yolox["batch"].numpy(), rtol=0, atol=1e-5)
    assert (pixels[:, :, 240:] == np.float32(114 / 255)).all()  # the bottom padding: 480 * 0.5 = 240 rows


def rows_of(outputs: list[np.ndarray], layout: str, batch: int) -> list[np.ndarray]:
    """Per-image ``[K, 6]`` rows (x1, y1, x2, y2, score, label) from either layout, in the graph's order."""
    if layout == "flat":
        (detections,) = outputs
        assert detections.ndim == 2 and detections.shape[1] == 7
        # Flat rows come image by image (image_index never decreases).
        assert (np.diff(detections[:, 0]) >= 0).all()
        return [detections[detections[:, 0] == i][:, 1:] for i in range(batch)]
    counts, boxes, scores, labels = outputs
    assert counts.shape == (batch, 1) and counts.dtype == np.int64 and labels.dtype == np.int64
    rows = []
    for i, n in enumerate(counts[:, 0]):
        # Rows past an image's count are zero.
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()
        rows.append(np.concatenate((boxes[i, :n], scores[i, :n, None], labels[i, :n, None].astype(np.float32)), 1))
    return rows


def assert_same_detections(actual: list[np.ndarray], expected: list[torch.Tensor]) -> None:
    """Same detections in the same order: both sides rank an image's detections best first, and with distinct
    scores that order is defined."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        want = want.numpy()
        assert got.shape == want.shape
        np.testing.assert_array_equal(got[:, 5], want[:, 5])  # labels
        np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-3)
        np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=0, atol=1e-5)


def synthetic_scene(seed: int, batch: int = 3, count: int = 150, classes: int = 4) -> tuple[torch.Tensor, ...]:
    """Overlapping boxes in an 80x80 field and distinct scores (a permutation of a linspace: no ties). Image 1
    is scaled under the 0.3 threshold (no detection), image 2 to a few just above it (the cap does not bite)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, count, 2, generator=generator) * 80
    sizes = torch.rand(batch, count, 2, generator=generator) * 30 + 8
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1)
    total = batch * count * classes
    scores = torch.linspace(0.01, 0.99, total)[torch.randperm(total, generator=generator)]
    scores = scores.reshape(batch, count, classes) * torch.tensor([1.0, 0.25, 0.305][:batch]).reshape(-1, 1, 1)
    return boxes, scores


def export_selection(selection: BatchedSelection, path: Path, example: tuple[torch.Tensor, ...] | None = None) -> str:
    """BatchedSelection alone to ONNX as export_model records it (TorchScript exporter, opset 17), dynamic batch."""
    import warnings

    names = ["num_predictions", "boxes", "scores", "labels"] if selection.layout == "batched" else ["detections"]
    axes = {"candidate_boxes": {0: "batch"}, "candidate_scores": {0: "batch"}}
    axes.update({n: {0: "num_detections" if selection.layout == "flat" else "batch"} for n in names})
    example = example if example is not None else synthetic_scene(seed=100, batch=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(selection, example, str(path), dynamo=False, opset_version=17,
                          input_names=["candidate_boxes", "candidate_scores"], output_names=names,
                          dynamic_axes=axes)
    return str(path)


def run_selection(path: str, boxes: torch.Tensor, scores: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"candidate_boxes": boxes.numpy(), "candidate_scores": scores.numpy()})


@pytest.mark.parametrize("layout", ["batched", "flat"])
@pytest.mark.parametrize("multi_label", [True, False], ids=["multi_label", "best_class"])
@pytest.mark.parametrize("agnostic", [True, False], ids=["agnostic", "class_wise"])
def test_batched_selection_matches_select_detections(tmp_path, layout, multi_label, agnostic):
    settings = SelectionSettings(score_threshold=0.3, nms_threshold=0.5, multi_label_per_box=multi_label,
                                 class_agnostic_nms=agnostic, nms_top_k=100, max_predictions=8)
    path = export_selection(BatchedSelection(settings, layout), tmp_path / "selection.onnx")
    boxes, scores = synthetic_scene(seed=0)
    uncapped = select_detections(boxes, scores, **asdict(replace(settings, max_predictions=1000)))
    no_nms = select_detections(boxes, scores, **asdict(replace(settings, max_predictions=1000, nms_threshold=1.0)))
    # The scene exercises what it should: NMS removes boxes, the cap bites on image 0 but not on image 2
    # (not empty), image 1 has nothing, and nms_top_k (100) keeps fewer candidates than the image has.
    assert len(no_nms[0]) > len(uncapped[0]) > settings.max_predictions
    assert 0 < len(uncapped[2]) < settings.max_predictions and len(uncapped[1]) == 0
    assert (scores[0] >= 0.3).sum() > 100 if multi_label else (scores[0].max(1).values >= 0.3).sum() > 100
    # Exported with a batch of 2; run with 3, 1 and 1 without any detection.
    for images in ([0, 1, 2], [0], [1]):
        expected = select_detections(boxes[images], scores[images], **asdict(settings))
        outputs = run_selection(path, boxes[images], scores[images])
        assert_same_detections(rows_of(outputs, layout, len(images)), expected)


def test_batched_selection_maps_boxes_to_the_image(tmp_path):
    """``box_scale`` undoes the letterbox's scale and ``box_limit_hw`` clips to the image."""
    settings = SelectionSettings(score_threshold=0.3, nms_threshold=0.5, max_predictions=20)
    selection = BatchedSelection(settings, "batched", box_scale=0.5, box_limit_hw=(120, 100))
    path = export_selection(selection, tmp_path / "mapped.onnx")
    boxes, scores = synthetic_scene(seed=1)
    expected = select_detections(boxes, scores, **asdict(settings))
    for rows in expected:
        rows[:, :4] = torch.minimum((rows[:, :4] / 0.5).clamp_min(0), torch.tensor([100.0, 120.0, 100.0, 120.0]))
    assert any((rows[:, :4] == 0).any() and (rows[:, [0, 2]] == 100).any() for rows in expected)  # clipped
    assert_same_detections(rows_of(run_selection(path, boxes, scores), "batched", 3), expected)


@pytest.mark.parametrize("agnostic", [True, False], ids=["agnostic", "class_wise"])
def test_batched_selection_keeps_images_apart_with_boxes_outside_the_image(tmp_path, agnostic):
    """Raw boxes stick out of the image (negative x1, y1). One image's box must never suppress another's, however
    they sit; torchvision's batched_nms offset (group * (max + 1)) assumes coordinates >= 0 and would overlay
    image 1's [-41, -41, -1, -1] on image 0's [60, 60, 100, 100] (the largest coordinate 100)."""
    settings = SelectionSettings(score_threshold=0.3, nms_threshold=0.5, class_agnostic_nms=agnostic,
                                 multi_label_per_box=False, max_predictions=10)
    boxes = torch.tensor([[[60.0, 60, 100, 100], [10, 10, 30, 30]], [[-41.0, -41, -1, -1], [12, 12, 32, 32]]])
    # Image 0's corner box has the last class and image 1's the first: adjacent (image, class) groups.
    scores = torch.tensor([[[0.0, 0.0, 0.9], [0.5, 0.0, 0.0]], [[0.8, 0.0, 0.0], [0.0, 0.6, 0.0]]])
    expected = [torch.tensor([[60.0, 60, 100, 100, 0.9, 2], [10, 10, 30, 30, 0.5, 0]]),
                torch.tensor([[-41.0, -41, -1, -1, 0.8, 0], [12, 12, 32, 32, 0.6, 1]])]
    path = export_selection(BatchedSelection(settings, "batched"), tmp_path / "apart.onnx", (boxes, scores))
    assert_same_detections(rows_of(run_selection(path, boxes, scores), "batched", 2), expected)
    # The same within one image, between classes: two disjoint boxes both stay, in the graph and in Python.
    boxes = torch.tensor([[[60.0, 60, 100, 100], [-41, -41, -1, -1]]])
    scores = torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.8, 0.0]]])
    expected = [torch.tensor([[60.0, 60, 100, 100, 0.9, 0], [-41, -41, -1, -1, 0.8, 1]])]
    assert_same_detections(rows_of(run_selection(path, boxes, scores), "batched", 1), expected)
    assert_same_detections(select_detections(boxes, scores, **asdict(settings)), expected)


@pytest.mark.parametrize(("layout", "preprocessing"), [("batched", False), ("flat", True)])
def test_yolox_graph_with_postprocessing_equals_select_detections(yolox, layout, preprocessing):
    """The whole graph (optionally the letterbox, the model, the selection) against select_detections applied to
    the raw outputs of the same model's raw export: deterministic, the same float values on both sides."""
    model, folder = yolox["model"], yolox["folder"]
    conf, iou, cap = 3e-4, 0.5, 15  # random-init YOLOX scores are ~1e-3 at most
    feed = yolox["images"] if preprocessing else yolox["batch"]
    if preprocessing:
        raw_path = yolox["raw_pre"].path
    else:
        raw_path = export_model(model, folder / "raw.onnx", input_size=(SIZE, SIZE), batch_size=None).path
    full = export_model(model, folder / f"full_{layout}.onnx", input_size=(SIZE, SIZE), preprocessing=preprocessing,
                        image_size=(480, 640) if preprocessing else None, postprocessing=True,
                        output_layout=layout, conf=conf, iou=iou, max_predictions=cap, batch_size=None)
    meta = read_metadata(full.path)
    assert meta["postprocessing"]["layout"] == layout and meta["postprocessing"]["score_threshold"] == conf
    settings = _post_processor(model, conf, iou, cap).selection()
    assert not settings.multi_label_per_box  # YOLOX's own setting, replayed by the graph

    boxes, scores = (torch.from_numpy(a) for a in run_onnx(raw_path, feed.numpy()))
    for image_scores in scores:  # distinct candidate scores, fewer than nms_top_k pass: a defined selection
        best = image_scores.max(1).values
        passing = best[best >= conf]
        assert 0 < len(passing) < settings.nms_top_k and len(torch.unique(passing)) == len(passing)
    expected = select_detections(boxes, scores, **asdict(settings))
    scale, (h, w) = (0.5, (480, 640)) if preprocessing else (1.0, (SIZE, SIZE))
    limit = torch.tensor([w, h, w, h], dtype=torch.float32)
    for rows in expected:  # the graph returns boxes in its input image's pixels, clipped to it
        rows[:, :4] = torch.minimum((rows[:, :4] / scale).clamp_min(0), limit)
    assert any(len(rows) == cap for rows in expected)  # the cap bites
    assert_same_detections(rows_of(run_onnx(full.path, feed.numpy()), layout, len(feed)), expected)
    # Batch 1 through the dynamic-batch file: the first image's detections alone.
    assert_same_detections(rows_of(run_onnx(full.path, feed[:1].numpy()), layout, 1), expected[:1])
