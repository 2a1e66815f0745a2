"""Tests for the YOLOX architectures (``architecture: yolox_*``) and their NMS post-processing."""

from __future__ import annotations

import warnings

import pytest
import torch

from super_recipes import models
from super_recipes.detection.yolox import model as yolox_model
from super_recipes.detection.yolox.blocks import BN_EPS, BN_MOMENTUM
from super_recipes.detection.yolox.model import YOLOX_SIZES, YoloX
from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback
from super_recipes.models.weights import head_prefix, load_state_dict_into
from super_recipes.registry import PROCESSING

SIZES = list(YOLOX_SIZES)
# Published parameter counts at 80 classes (YOLOX paper / model zoo), in millions, as printed (rounded).
PUBLISHED_PARAMS = {"yolox_n": 0.91, "yolox_t": 5.06, "yolox_s": 9.0, "yolox_m": 25.3, "yolox_l": 54.2,
                    "yolox_x": 99.1}
# Exact counts of Megvii's reference implementation (github.com/Megvii-BaseDetection/YOLOX, yolox/models at
# 6ddff48: YOLOX(YOLOPAFPN(depth, width, depthwise), YOLOXHead(num_classes, width, depthwise)) with each size's
# depth/width, depthwise for nano), counted with sum(p.numel() for p in model.parameters()).
REFERENCE_PARAMS = {"yolox_n": 912_159, "yolox_t": 5_055_855, "yolox_s": 8_968_255, "yolox_m": 25_326_495,
                    "yolox_l": 54_208_895, "yolox_x": 99_071_455}
WIDTHS = {"yolox_n": 0.25, "yolox_t": 0.375, "yolox_s": 0.5, "yolox_m": 0.75, "yolox_l": 1.0, "yolox_x": 1.25}
# The large models get one tiny input: their forward passes would dominate this file's runtime.
INPUTS = {name: (2, 32, 32) if name in ("yolox_l", "yolox_x") else (2, 64, 64) for name in SIZES}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Inputs here are tiny: a second intra-op thread only adds spin-waiting, which on a busy CI machine turns
    # 50 ms forwards into seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_size_is_registered() -> None:
    assert set(SIZES) == {"yolox_n", "yolox_t", "yolox_s", "yolox_m", "yolox_l", "yolox_x"}
    assert set(SIZES) <= set(models.names())


def _count(name: str, **kwargs) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = models.get(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SIZES)
def test_parameter_count_matches_published(name: str) -> None:
    params = _count(name)
    assert params == REFERENCE_PARAMS[name]
    # The published figure is the count rounded to its last printed digit (deviation <= 0.36%, yolox_s).
    digits = len(str(PUBLISHED_PARAMS[name]).partition(".")[2])
    assert round(params / 1e6, digits) == PUBLISHED_PARAMS[name]
    # Only the classification convolutions (1x1, 256 * width channels in, one per stride) depend on the classes.
    per_class = 3 * (int(256 * WIDTHS[name]) + 1)
    assert params - _count(name, num_classes=4) == (80 - 4) * per_class


@pytest.mark.parametrize("name", SIZES)
def test_output_shapes_in_each_mode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, height, width = INPUTS[name]
    num_classes = 3
    model = models.get(name, num_classes=num_classes)
    x = torch.randn(batch, 3, height, width)
    expected_maps = [(batch, 1, height // s, width // s, num_classes + 5) for s in (8, 16, 32)]
    num_anchors = sum(h * w for _, _, h, w, _ in expected_maps)
    with torch.no_grad():
        raw = model.train()(x)
        assert isinstance(raw, list) and [tuple(r.shape) for r in raw] == expected_maps

        decoded, raw = model.eval()(x)
        assert tuple(decoded.shape) == (batch, num_anchors, num_classes + 5)
        assert [tuple(r.shape) for r in raw] == expected_maps

        # Export mode (tracing itself is exercised once, on the smallest model, below).
        monkeypatch.setattr(yolox_model, "is_exporting", lambda: True)
        exported = model(x)
    assert isinstance(exported, torch.Tensor) and tuple(exported.shape) == (batch, num_anchors, num_classes + 5)


def test_jit_trace_returns_decoded_only() -> None:
    model = models.get("yolox_n", num_classes=2).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in recent torch; it still traces
        traced = torch.jit.trace(model, x, check_trace=False)
        out = traced(x)
        decoded, _ = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == decoded.shape == (1, 8 * 12 + 4 * 6 + 2 * 3, 7)
    torch.testing.assert_close(out, decoded)


def test_torch_export_returns_decoded_only() -> None:
    model = models.get("yolox_n", num_classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    out = exported.module()(x)
    with torch.no_grad():
        decoded, _ = model(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, decoded)


def test_decoded_matches_hand_decode() -> None:
    model = models.get("yolox_n", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 96)  # not square: a swapped x/y grid would show
    with torch.no_grad():
        decoded, raw = model(x)
    rows = []
    for level, stride in zip(raw, (8, 16, 32), strict=True):
        _, _, height, width, _ = level.shape
        for gy in range(height):
            for gx in range(width):
                cell = level[:, 0, gy, gx]
                rows.append(torch.cat([
                    (cell[:, 0:1] + gx) * stride, (cell[:, 1:2] + gy) * stride,
                    torch.exp(cell[:, 2:4]) * stride, torch.sigmoid(cell[:, 4:]),
                ], dim=1))
    torch.testing.assert_close(decoded, torch.stack(rows, dim=1))
    assert decoded[..., 4:].min() >= 0 and decoded[..., 4:].max() <= 1


def test_decode_grids_are_cached_per_input_size() -> None:
    model = models.get("yolox_n", num_classes=1).eval()
    with torch.no_grad():
        small, _ = model(torch.randn(1, 3, 32, 32))
        large, _ = model(torch.randn(1, 3, 64, 32))
        again, _ = model(torch.randn(1, 3, 32, 32))
    assert small.shape[1] == again.shape[1] == 16 + 4 + 1 and large.shape[1] == 32 + 8 + 2
    assert len(model._grids) == 2
    assert "_grids" not in "".join(model.state_dict())


def test_head_initialisation_and_batchnorm_settings() -> None:
    model = models.get("yolox_s", num_classes=4)
    for conv in (*model.head.cls_preds, *model.head.obj_preds):
        torch.testing.assert_close(torch.sigmoid(conv.bias), torch.full_like(conv.bias, 0.01))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == BN_EPS == 1e-3 and bn.momentum == BN_MOMENTUM == 0.03 for bn in bns)
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    assert model.class_names is None and model.processing_params == {}


def test_models_get_sets_head_shapes() -> None:
    model = models.get("yolox_s", num_classes=4)
    assert isinstance(model, YoloX) and model.num_classes == 4
    assert [conv.out_channels for conv in model.head.cls_preds] == [4, 4, 4]
    assert [conv.out_channels for conv in model.head.reg_preds] == [4, 4, 4]
    assert [conv.out_channels for conv in model.head.obj_preds] == [1, 1, 1]
    assert [conv.in_channels for conv in model.head.cls_preds] == [128, 128, 128]  # 256 * width 0.5
    assert models.get("yolox_t", arch_params={"num_classes": 5}).head.cls_preds[0].out_channels == 5
    assert models.get("yolox_n").head.cls_preds[0].out_channels == 80


def test_finetuning_reloads_everything_but_the_class_convs() -> None:
    source = models.get("yolox_n", num_classes=80)
    target = models.get("yolox_n", num_classes=4)
    assert head_prefix(target) == "head"
    report = load_state_dict_into(target, source.state_dict(), strict_load="on")
    assert report.head_reinitialized
    assert sorted(report.mismatched) == [f"head.cls_preds.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    torch.testing.assert_close(target.head.reg_preds[0].weight, source.head.reg_preds[0].weight)


def test_dataset_processing_params_hook() -> None:
    model = models.get("yolox_n", num_classes=2)
    model.set_dataset_processing_params(class_names=("cat", "dog"), image_size=(640, 640))
    model.set_dataset_processing_params(iou=0.65)
    assert model.class_names == ["cat", "dog"]
    assert model.processing_params == {"class_names": ("cat", "dog"), "image_size": (640, 640), "iou": 0.65}


# --- post-processing ---------------------------------------------------------------------------------------------

def _decoded(*rows: tuple[float, float, float, float, float, list[float]]) -> torch.Tensor:
    """One image's decoded rows from ``(cx, cy, w, h, objectness, class scores)``, as a ``[1, N, C + 5]`` batch."""
    return torch.tensor([[*row[:5], *row[5]] for row in rows], dtype=torch.float32)[None]


def test_postprocess_output_format_and_confidence() -> None:
    preds = _decoded((50, 40, 20, 10, 0.8, [0.1, 0.5]))
    (out,) = YoloXPostPredictionCallback()(preds)
    torch.testing.assert_close(out, torch.tensor([[40.0, 35.0, 60.0, 45.0, 0.8 * 0.5, 1.0]]))


def test_postprocess_nms_removes_the_duplicate() -> None:
    preds = _decoded((50, 50, 20, 20, 0.9, [0.9, 0.0]), (51, 50, 20, 20, 0.8, [0.9, 0.0]),
                     (150, 150, 20, 20, 0.7, [0.9, 0.0]))
    (out,) = YoloXPostPredictionCallback(iou=0.6)(preds)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[:, 0], torch.tensor([40.0, 140.0]))  # the stronger duplicate survives
    (loose,) = YoloXPostPredictionCallback(iou=0.95)(preds)  # IoU of the pair is ~0.9
    assert loose.shape == (3, 6)


def test_postprocess_conf_filter() -> None:
    # Confidence is objectness x best class score: 0.5 * 0.5 = 0.25 passes 0.2, 0.3 * 0.5 = 0.15 does not.
    preds = _decoded((50, 50, 20, 20, 0.5, [0.5]), (150, 150, 20, 20, 0.3, [0.5]))
    (out,) = YoloXPostPredictionCallback(conf=0.2)(preds)
    assert out.shape == (1, 6) and out[0, 4].item() == pytest.approx(0.25)
    (none,) = YoloXPostPredictionCallback(conf=0.9)(preds)
    assert none.shape == (0, 6)


def test_postprocess_nms_is_class_aware() -> None:
    preds = _decoded((50, 50, 20, 20, 0.9, [0.9, 0.1]), (51, 50, 20, 20, 0.9, [0.1, 0.8]))
    (out,) = YoloXPostPredictionCallback()(preds)
    assert out.shape == (2, 6) and sorted(out[:, 5].tolist()) == [0.0, 1.0]
    (agnostic,) = YoloXPostPredictionCallback(classagnostic_nms=True)(preds)
    assert agnostic.shape == (1, 6) and agnostic[0, 5].item() == 0.0


def test_postprocess_max_predictions_and_nms_top_k() -> None:
    # Ten disjoint boxes with confidences 0.1 ... 1.0.
    preds = _decoded(*[(30.0 * i + 10, 10, 10, 10, 1.0, [0.1 * (i + 1)]) for i in range(10)])
    (out,) = YoloXPostPredictionCallback(max_predictions=4)(preds)
    torch.testing.assert_close(out[:, 4], torch.tensor([1.0, 0.9, 0.8, 0.7]))
    (top,) = YoloXPostPredictionCallback(nms_top_k=3)(preds)
    torch.testing.assert_close(top[:, 4], torch.tensor([1.0, 0.9, 0.8]))


def test_postprocess_empty_inputs() -> None:
    callback = YoloXPostPredictionCallback()
    empty = callback(torch.zeros(2, 0, 8))
    assert len(empty) == 2 and all(out.shape == (0, 6) for out in empty)
    assert callback(torch.zeros(0, 84, 8)) == []
    nothing_confident = callback(torch.zeros(3, 84, 8))  # objectness 0 everywhere
    assert [tuple(out.shape) for out in nothing_confident] == [(0, 6)] * 3


def test_postprocess_accepts_tuple_and_refuses_train_output() -> None:
    preds = _decoded((50, 40, 20, 10, 0.8, [0.5]))
    callback = YoloXPostPredictionCallback()
    torch.testing.assert_close(callback((preds, [])), callback(preds))
    with pytest.raises(ValueError, match="train mode"):
        callback([torch.zeros(1, 1, 8, 8, 6)] * 3)


def test_get_post_prediction_callback() -> None:
    model = models.get("yolox_n", num_classes=2).eval()
    callback = model.get_post_prediction_callback(conf=0.05, iou=0.5, max_predictions=7)
    assert isinstance(callback, YoloXPostPredictionCallback)
    assert (callback.conf, callback.iou, callback.max_predictions, callback.nms_top_k) == (0.05, 0.5, 7, 1000)
    assert not callback.classagnostic_nms
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    # Fresh head: every confidence is ~0.01 * 0.01, so a zero threshold is needed to get boxes at all.
    results = model.get_post_prediction_callback(conf=0.0, max_predictions=7)(outputs)
    assert len(results) == 2 and all(r.shape[1] == 6 and 0 < len(r) <= 7 for r in results)
    assert all((r[:, 2] >= r[:, 0]).all() and (r[:, 3] >= r[:, 1]).all() for r in results)
    assert PROCESSING.get("YoloXPostPredictionCallback") is YoloXPostPredictionCallback
