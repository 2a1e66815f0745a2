"""Detection transforms, box formats and collate: boxes must stay on the pixels they describe.

Every geometric test draws filled rectangles of distinct colours on a black image with their boxes as targets
(label = colour index), transforms the sample, and checks that each kept box still tightly encloses the pixels
of its colour.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from super_recipes.detection.box_formats import BOX_FORMATS, TARGET_FORMATS, convert_boxes
from super_recipes.detection.collate import CrowdDetectionCollateFN, DetectionCollateFN
from super_recipes.detection.sample import DetectionSample
from super_recipes.detection.transforms import (
    DetectionHorizontalFlip,
    DetectionHSV,
    DetectionLongestMaxSize,
    DetectionMixup,
    DetectionMosaic,
    DetectionPaddedRescale,
    DetectionPadIfNeeded,
    DetectionRandomAffine,
    DetectionStandardize,
    DetectionTargetsFormatTransform,
    DetectionVerticalFlip,
    boxes_from_targets,
    sample_to_item,
    targets_from_boxes,
)
from super_recipes.registry import COLLATE_FUNCTIONS, TRANSFORMS, build

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255),
          (0, 128, 255), (128, 0, 255), (255, 128, 0)]


def make_sample(h: int, w: int, rects: list, first_color: int = 0, crowd: list | None = None,
                image_id: int = 0) -> DetectionSample:
    """Black image with ``rects`` (x1, y1, x2, y2 pixel edges) filled in colours first_color, first_color + 1...;
    ``crowd`` rects follow in the next colours and become crowd boxes."""
    image = np.zeros((h, w, 3), np.uint8)
    crowd = crowd or []
    for i, (x1, y1, x2, y2) in enumerate(rects + crowd):
        image[y1:y2, x1:x2] = COLORS[first_color + i]
    labels = np.arange(first_color, first_color + len(rects), dtype=np.int64)
    crowd_labels = np.arange(first_color + len(rects), first_color + len(rects) + len(crowd), dtype=np.int64)
    return DetectionSample(image=image, boxes=np.array(rects, np.float32).reshape(-1, 4), labels=labels,
                           crowd_boxes=np.array(crowd, np.float32).reshape(-1, 4), crowd_labels=crowd_labels,
                           image_id=image_id, original_shape=(h, w))


def color_bbox(image: np.ndarray, color: tuple, tol: int = 60) -> np.ndarray | None:
    mask = np.all(np.abs(image.astype(np.int32) - np.array(color)) <= tol, axis=2)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def assert_tight(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, tol: float = 2.0) -> None:
    for box, label in zip(boxes, labels, strict=True):
        found = color_bbox(image, COLORS[label])
        assert found is not None, f"colour {label} vanished but its box {box} was kept"
        # The box encloses the colour's pixels (a pixel of slack for interpolated edges) ...
        assert np.all(found[:2] >= box[:2] - 1) and np.all(found[2:] <= box[2:] + 1), (label, found, box)
        # ... and tightly.
        assert np.abs(found - box).max() <= tol, (label, found, box)


def assert_boxes_sane(sample: DetectionSample) -> None:
    h, w = sample.image.shape[:2]
    for boxes in (sample.boxes, sample.crowd_boxes):
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4
        assert np.all(boxes[:, 2] - boxes[:, 0] >= 2) and np.all(boxes[:, 3] - boxes[:, 1] >= 2)
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= w) and np.all(boxes[:, [1, 3]] <= h)


def seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)


# ---------------------------------------------------------------------------------------------- geometric
@pytest.mark.parametrize("trial", range(6))
def test_mosaic_boxes_follow_pixels(trial: int) -> None:
    seed(trial)
    samples = [
        make_sample(64, 64, [[4, 6, 24, 30]], 0, crowd=[[40, 40, 60, 58]]),
        make_sample(48, 80, [[10, 8, 40, 30], [50, 20, 76, 44]], 2),
        make_sample(96, 64, [[6, 10, 30, 50], [36, 60, 60, 90]], 4),
        make_sample(40, 40, [[8, 8, 32, 32]], 6),
    ]
    mosaic = DetectionMosaic(input_dim=(64, 64), border_value=0)
    assert mosaic.additional_samples_count == 3
    out = mosaic(samples[0], samples[1:])
    assert out.image.shape == (128, 128, 3)
    assert_boxes_sane(out)
    assert_tight(out.image, out.boxes, out.labels)
    assert_tight(out.image, out.crowd_boxes, out.crowd_labels)
    # Conversely, every colour still clearly visible kept its box.
    kept = set(out.labels.tolist()) | set(out.crowd_labels.tolist())
    for label in range(7):
        found = color_bbox(out.image, COLORS[label], tol=0)
        if found is not None and min(found[2] - found[0], found[3] - found[1]) >= 3:
            assert label in kept, label


def test_mosaic_switch_off_and_prob() -> None:
    sample = make_sample(32, 32, [[2, 2, 10, 10]])
    mosaic = DetectionMosaic(input_dim=32)
    mosaic.close()
    assert mosaic.additional_samples_count == 0 and mosaic(sample) is sample
    assert DetectionMosaic(input_dim=32, prob=0.0)(sample, [sample] * 3) is sample
    with pytest.raises(ValueError, match="3 extra samples"):
        DetectionMosaic(input_dim=32)(sample, [sample])


@pytest.mark.parametrize("trial", range(5))
def test_random_affine_rotation_and_shear(trial: int) -> None:
    seed(trial)
    sample = make_sample(96, 96, [[10, 12, 34, 30], [50, 8, 80, 40], [20, 56, 44, 88]], crowd=[[60, 60, 86, 82]])
    affine = DetectionRandomAffine(degrees=(25, 35) if trial % 2 else (-35, -25), translate=0.05,
                                   scales=(0.8, 1.1), shear=8, target_size=(80, 104), border_value=0)
    out = affine(sample)
    assert out.image.shape == (80, 104, 3)
    assert len(out.boxes) >= 2
    assert_boxes_sane(out)
    assert_tight(out.image, out.boxes, out.labels)
    assert_tight(out.image, out.crowd_boxes, out.crowd_labels)


def test_random_affine_crops_and_filters_candidates() -> None:
    # No rotation/zoom/shift: a 128 px image whose centre goes to the centre of a 64 px output, i.e. the window
    # x, y in [32, 96) of the input.
    rects = [[40, 40, 60, 60],    # inside: kept, moved by -32
             [0, 0, 20, 20],      # outside: dropped
             [86, 50, 106, 70],   # half visible: kept, clipped
             [40, 93, 80, 128]]   # 3 px of 35 visible (8.6% of its area): dropped by area_thr, kept without filter
    sample = make_sample(128, 128, rects)
    fixed = {"degrees": 0, "translate": 0, "scales": (1, 1), "shear": 0, "target_size": 64, "border_value": 0}
    out = DetectionRandomAffine(**fixed)(sample)
    assert out.labels.tolist() == [0, 2]
    np.testing.assert_allclose(out.boxes, [[8, 8, 28, 28], [54, 18, 64, 38]], atol=1e-4)
    assert_tight(out.image, out.boxes, out.labels, tol=0)
    unfiltered = DetectionRandomAffine(**fixed, filter_box_candidates=False)(sample)
    assert unfiltered.labels.tolist() == [0, 2, 3]
    assert_tight(unfiltered.image, unfiltered.boxes, unfiltered.labels, tol=0)


@pytest.mark.parametrize("trial", range(6))
def test_mixup_adds_the_other_images_boxes(trial: int) -> None:
    seed(trial)
    main = make_sample(64, 64, [])  # black: the blend shows the other image at half brightness
    other = make_sample(48, 80, [[4, 4, 30, 24], [40, 10, 70, 40], [10, 30, 30, 46]], 1)
    mixup = DetectionMixup(input_dim=(64, 64), mixup_scale=(0.6, 1.4), flip_prob=0.5, border_value=0)
    assert mixup.additional_samples_count == 1
    out = mixup(main, [other])
    assert out.image.shape == (64, 64, 3) and out.image.dtype == np.uint8
    assert_boxes_sane(out)
    assert len(out.boxes) >= 1
    assert_tight(np.clip(out.image.astype(np.int32) * 2, 0, 255), out.boxes, out.labels)


def test_mixup_keeps_the_samples_own_boxes_first() -> None:
    seed(0)
    main = make_sample(64, 64, [[5, 5, 25, 25]], 0, crowd=[[40, 40, 50, 50]])
    other = make_sample(64, 64, [[30, 30, 60, 60]], 5)
    out = DetectionMixup(input_dim=64, mixup_scale=(1, 1), flip_prob=0, border_value=0)(main, [other])
    np.testing.assert_array_equal(out.boxes, [[5, 5, 25, 25], [30, 30, 60, 60]])
    assert out.labels.tolist() == [0, 5]
    np.testing.assert_array_equal(out.crowd_boxes, main.crowd_boxes)
    np.testing.assert_array_equal(out.image[10, 10], np.array(COLORS[0]) // 2)
    np.testing.assert_array_equal(out.image[45, 55], np.array(COLORS[5]) // 2)
    DetectionMixup(input_dim=64).close()


@pytest.mark.parametrize("flip", [DetectionHorizontalFlip, DetectionVerticalFlip])
def test_flips(flip: type) -> None:
    sample = make_sample(48, 64, [[2, 3, 20, 15], [30, 20, 64, 48]], crowd=[[5, 30, 15, 40]])
    out = flip(prob=1.0)(sample)
    assert out.image.shape == sample.image.shape
    assert_tight(out.image, out.boxes, out.labels, tol=0)
    assert_tight(out.image, out.crowd_boxes, out.crowd_labels, tol=0)
    assert flip(prob=0.0)(sample) is sample
    twice = flip(prob=1.0)(out)
    np.testing.assert_array_equal(twice.image, sample.image)
    np.testing.assert_allclose(twice.boxes, sample.boxes)


def _map_back(sample: DetectionSample, boxes: np.ndarray) -> np.ndarray:
    pad = np.array(sample.pad * 2, np.float32)
    return (boxes - pad) / sample.scale


def test_padded_rescale_letterboxes_and_records_scale() -> None:
    sample = make_sample(60, 100, [[5, 5, 40, 30], [60, 20, 95, 55]], crowd=[[45, 40, 55, 58]])
    out = DetectionPaddedRescale(input_dim=(64, 64), pad_value=114)(sample)
    assert out.image.shape == (64, 64, 3)
    assert out.scale == pytest.approx(0.64) and out.pad == (0.0, 0.0)
    assert np.all(out.image[40:, :] == 114)  # 60 * 0.64 = 38.4 -> 38 rows of image, padding below
    assert_tight(out.image, out.boxes, out.labels)
    np.testing.assert_allclose(_map_back(out, out.boxes), sample.boxes, atol=1e-4)
    np.testing.assert_allclose(_map_back(out, out.crowd_boxes), sample.crowd_boxes, atol=1e-4)


def test_longest_max_size_and_pad_if_needed_compose_the_mapping() -> None:
    sample = make_sample(30, 40, [[2, 2, 18, 14], [22, 10, 38, 28]])
    up = DetectionLongestMaxSize(max_height=80, max_width=80)(sample)
    assert up.image.shape == (60, 80, 3) and up.scale == pytest.approx(2.0)
    assert_tight(up.image, up.boxes, up.labels)
    padded = DetectionPadIfNeeded(min_height=90, min_width=100, pad_value=0, padding_mode="center")(up)
    assert padded.image.shape == (90, 100, 3) and padded.pad == (10.0, 15.0)
    assert_tight(padded.image, padded.boxes, padded.labels, tol=1)  # upscaled edges blur by a pixel
    corner = DetectionPadIfNeeded(min_height=90, min_width=100, pad_value=7)(up)
    assert corner.pad == (0.0, 0.0) and np.all(corner.image[60:] == 7) and np.all(corner.image[:, 80:] == 7)
    final = DetectionPaddedRescale(input_dim=45)(padded)  # scale and pad both shrink by 0.45
    assert final.scale == pytest.approx(0.9) and final.pad == pytest.approx((4.5, 6.75))
    for out in (up, padded, corner, final):
        np.testing.assert_allclose(_map_back(out, out.boxes), sample.boxes, atol=1e-4)
    assert DetectionPadIfNeeded(min_height=10, min_width=10)(up) is up


def test_hsv_changes_colours_not_boxes() -> None:
    sample = make_sample(32, 32, [[2, 2, 12, 12], [16, 16, 30, 30]])
    sample.image[sample.image == 0] = 90  # a grey background can change hue/saturation/value too
    changed = 0
    for trial in range(8):
        seed(trial)
        out = DetectionHSV(prob=1.0, hgain=20, sgain=60, vgain=60)(sample)
        assert out.image.shape == sample.image.shape and out.image.dtype == np.uint8
        np.testing.assert_array_equal(out.boxes, sample.boxes)
        np.testing.assert_array_equal(out.labels, sample.labels)
        changed += int(not np.array_equal(out.image, sample.image))
    assert changed >= 4
    with pytest.raises(TypeError, match="uint8"):
        DetectionHSV()(DetectionStandardize()(sample))


def test_standardize() -> None:
    sample = make_sample(8, 8, [[1, 1, 5, 5]])
    out = DetectionStandardize()(sample)
    assert out.image.dtype == np.float32 and out.image.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(out.boxes, sample.boxes)


def test_full_training_pipeline_keeps_boxes_sane() -> None:
    seed(3)
    spec = [{"DetectionMosaic": {"input_dim": [64, 64]}},
            {"DetectionRandomAffine": {"degrees": 10, "translate": 0.1, "scales": [0.5, 1.5], "shear": 2,
                                       "target_size": [64, 64]}},
            {"DetectionMixup": {"input_dim": [64, 64], "mixup_scale": [0.5, 1.5]}},
            {"DetectionHSV": {"prob": 1.0}}, {"DetectionHorizontalFlip": {"prob": 0.5}},
            {"DetectionPaddedRescale": {"input_dim": [64, 64]}},
            {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH", "input_dim": [64, 64]}}]
    transforms = [build(TRANSFORMS, s) for s in spec]
    pool = [make_sample(48 + 8 * i, 64, [[4, 4, 30, 30], [34, 20, 60, 44]], 2 * i, image_id=i) for i in range(4)]
    for _ in range(4):
        sample = pool[0]
        for t in transforms:
            count = getattr(t, "additional_samples_count", 0)
            sample = t(sample, random.sample(pool, count)) if count else t(sample)
        assert_boxes_sane(sample)
        image, targets, extras = transforms[-1].to_item(sample)
        assert image.shape == (3, 64, 64) and targets.shape == (len(sample.boxes), 5)
    with pytest.raises(ValueError, match="expected an image of size"):
        transforms[-1](make_sample(32, 32, []))


# ---------------------------------------------------------------------------------------------- formats
def test_box_format_round_trips_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (7, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (7, 2))], axis=1).astype(np.float32)
    for fmt in BOX_FORMATS:
        there = convert_boxes(boxes, "XYXY", fmt, (90, 120))
        assert there.dtype == np.float32
        np.testing.assert_allclose(convert_boxes(there, fmt, "XYXY", (90, 120)), boxes, rtol=1e-5, atol=1e-4)
        tensor = convert_boxes(torch.from_numpy(boxes), "XYXY", fmt, (90, 120))
        np.testing.assert_allclose(tensor.numpy(), there, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(convert_boxes(np.array([[10, 20, 30, 60]], np.float32), "XYXY", "CXCYWH"),
                               [[20, 40, 20, 40]])
    with pytest.raises(ValueError, match="image shape"):
        convert_boxes(boxes, "XYXY", "NORMALIZED_CXCYWH")
    with pytest.raises(ValueError, match="Unknown box format"):
        convert_boxes(boxes, "XYXY", "YXYX")


def test_target_formats() -> None:
    boxes, labels, shape = np.array([[10, 20, 30, 60]], np.float32), np.array([3]), (100, 200)
    expected = {"LABEL_CXCYWH": [3, 20, 40, 20, 40], "XYXY_LABEL": [10, 20, 30, 60, 3],
                "LABEL_XYXY": [3, 10, 20, 30, 60], "CXCYWH_LABEL": [20, 40, 20, 40, 3],
                "LABEL_NORMALIZED_CXCYWH": [3, 0.1, 0.4, 0.1, 0.4], "XYWH_LABEL": [10, 20, 20, 40, 3]}
    for fmt, row in expected.items():
        targets = targets_from_boxes(boxes, labels, fmt, shape)
        assert targets.dtype == np.float32
        np.testing.assert_allclose(targets, [row], rtol=1e-6)
    for fmt in TARGET_FORMATS:
        back, back_labels = boxes_from_targets(targets_from_boxes(boxes, labels, fmt, shape), fmt, shape)
        np.testing.assert_allclose(back, boxes, rtol=1e-5)
        assert back_labels.tolist() == [3]
    with pytest.raises(ValueError, match="Unknown detection target format"):
        DetectionTargetsFormatTransform(output_format="LABEL_XYZ")
    assert DetectionTargetsFormatTransform("xyxy_label").output_format == "XYXY_LABEL"


def test_sample_to_item() -> None:
    sample = make_sample(16, 24, [[2, 4, 10, 12]], crowd=[[12, 2, 20, 10]], image_id=7)
    sample.scale, sample.pad, sample.original_shape = 0.5, (1.0, 2.0), (32, 48)
    image, targets, extras = sample_to_item(sample)
    assert image.dtype == torch.float32 and image.shape == (3, 16, 24)
    assert torch.equal(image[:, 5, 3], torch.tensor(COLORS[0], dtype=torch.float32))  # BGR kept, 0..255
    np.testing.assert_allclose(targets, [[0, 6, 8, 8, 8]])
    np.testing.assert_allclose(extras["crowd_targets"], [[1, 16, 6, 8, 8]])
    assert extras["image_id"] == 7 and extras["original_shape"] == (32, 48)
    assert extras["scale"] == 0.5 and extras["pad"] == (1.0, 2.0)
    image, targets, _ = DetectionTargetsFormatTransform("XYXY_LABEL").to_item(DetectionStandardize()(sample))
    assert float(image.max()) == pytest.approx(1.0)
    np.testing.assert_allclose(targets, [[2, 4, 10, 12, 0]])
    empty = sample_to_item(make_sample(8, 8, []))
    assert empty[1].shape == (0, 5) and empty[2]["crowd_targets"].shape == (0, 5)


# ---------------------------------------------------------------------------------------------- collate
def _items() -> list:
    samples = [make_sample(16, 16, [[1, 1, 5, 5], [6, 6, 12, 12]], image_id=10),
               make_sample(16, 16, [], crowd=[[2, 2, 9, 9]], image_id=11),
               make_sample(16, 16, [[0, 0, 4, 4], [4, 4, 8, 8], [8, 8, 16, 16]], image_id=12)]
    samples[2].scale, samples[2].pad, samples[2].original_shape = 0.25, (0.0, 3.0), (40, 64)
    return [sample_to_item(s) for s in samples]


def test_detection_collate() -> None:
    collate = build(COLLATE_FUNCTIONS, "DetectionCollateFN")
    assert isinstance(collate, DetectionCollateFN)
    images, targets = collate(_items())
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert targets.shape == (5, 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [0, 0, 2, 2, 2]
    np.testing.assert_allclose(targets[0].numpy(), [0, 0, 3, 3, 4, 4])
    _, empty = collate([_items()[1]])
    assert empty.shape == (0, 6)
    with pytest.raises(ValueError, match="same size"):
        collate([sample_to_item(make_sample(8, 8, [])), sample_to_item(make_sample(8, 10, []))])


def test_crowd_detection_collate() -> None:
    collate = build(COLLATE_FUNCTIONS, "CrowdDetectionCollateFN")
    assert isinstance(collate, CrowdDetectionCollateFN)
    images, targets, extras = collate(_items())
    assert images.shape == (3, 3, 16, 16) and targets.shape == (5, 6)
    assert extras["crowd_targets"].shape == (1, 6) and extras["crowd_targets"][0, 0] == 1
    assert extras["image_ids"].tolist() == [10, 11, 12] and extras["image_ids"].dtype == torch.int64
    assert extras["original_shapes"].tolist() == [[16, 16], [16, 16], [40, 64]]
    assert extras["scales"].tolist() == [1.0, 1.0, 0.25] and extras["scales"].dtype == torch.float32
    assert extras["pads"].tolist() == [[0, 0], [0, 0], [0, 3]]
