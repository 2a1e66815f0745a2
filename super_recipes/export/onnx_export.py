"""``model.export("model.onnx", ...)`` / :func:`export_model`: one ONNX file a runtime runs without PyTorch.

Classification and segmentation graphs return ``logits``; detection graphs return ``boxes [B, N, 4]`` (x1, y1,
x2, y2 input pixels) and ``scores [B, N, C]`` (the family's decoded output, one layout for every family), or with
``postprocessing`` the detections in the ``batched`` or ``flat`` layout (:class:`super_recipes.export.graph.
BatchedSelection`). With ``preprocessing`` the input is a uint8 ``[B, 3, H, W]`` image (detection: BGR, the
order the detection datasets train in; classification and segmentation: RGB) and the graph resizes and
normalises it as the model's validation did. The file carries its own description as ONNX metadata
(``super_recipes`` key: task, input, outputs, preprocessing, class names), which
:func:`super_recipes.export.runtime.load_onnx_for_prediction` reads back.

The TorchScript-based exporter is used (``dynamo=False``): it is the one that records torchvision's NMS as ONNX
``NonMaxSuppression`` and keeps the detection graphs ONNX Runtime loads at opset 17.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.export.processing import model_task, preprocessing_for
from super_recipes.export.requirements import require_onnx

logger = logging.getLogger("super_recipes")

PRECISIONS = ("fp32", "fp16")
METADATA_KEY = "super_recipes"
DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    """What was written: the file, its input and outputs, and how to feed it (also stored in the file)."""

    path: str
    task: str
    input_name: str
    input_shape: list[int | str]
    input_dtype: str
    output_names: list[str]
    opset: int
    precision: str
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    processing_params: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None  # detection: the family's select_detections settings at export

    def metadata(self) -> str:
        return json.dumps(asdict(self), default=str)


def export_model(model: nn.Module, output: str | Path, *, batch_size: int | None = 1,
                 input_size: Sequence[int] | None = None, image_size: Sequence[int] | None = None,
                 opset: int = DEFAULT_OPSET, precision: str = "fp32", preprocessing: bool = False,
                 postprocessing: bool = False, output_layout: str = "batched", conf: float | None = None,
                 iou: float | None = None, max_predictions: int | None = None,
                 device: str | torch.device = "cpu") -> ExportResult:
    """Export ``model`` to ONNX at ``output`` (``model.export(...)``; ``python -m super_recipes.export``).

    ``batch_size``: a number for a static batch, ``None`` for a dynamic one. ``input_size``: the model's input
    (h, w) (default: its processing parameters', else 224x224). ``image_size``: with ``preprocessing``, the
    size of the uint8 images the graph takes (default: ``input_size``). ``precision``: ``fp32`` or ``fp16``
    (the model and its input in half precision; detection post-processing stays in float32). Detection only:
    ``postprocessing`` with ``output_layout`` ``batched`` or ``flat`` and the ``conf`` / ``iou`` /
    ``max_predictions`` of ``predict()`` (defaults: 0.25 / 0.7 / 100). Re-parameterisable models (RepVGG,
    YOLO-NAS, PP-YOLOE) are fused first, on a copy: ``model`` itself is left as it was.
    """
    require_onnx("Export to ONNX")
    if precision not in PRECISIONS:
        raise RecipeError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}. "
                          f"{did_you_mean(str(precision), PRECISIONS)}".rstrip())
    if batch_size is not None and int(batch_size) < 1:
        raise RecipeError(f"batch_size must be >= 1 (or None for a dynamic batch), got {batch_size}.")
    from super_recipes.callbacks.averaging import unwrap_model

    task = model_task(unwrap_model(model))
    if task != "detection" and (postprocessing or conf is not None or iou is not None):
        raise RecipeError(f"postprocessing/conf/iou apply to detection models; this one is a {task} model.")
    graph, spec, post, selection = _build_graph(unwrap_model(model), task, input_size, image_size, preprocessing,
                                     postprocessing, output_layout, conf, iou, max_predictions, precision)
    device = torch.device(device)
    graph = graph.to(device).eval()
    in_hw = spec.image_hw if preprocessing else spec.model_hw
    dtype = torch.uint8 if preprocessing else (torch.float16 if precision == "fp16" else torch.float32)
    example = _example_input(int(batch_size or 2), in_hw, dtype, device)
    output_names = _output_names(task, postprocessing, output_layout)
    dynamic = None if batch_size is not None else _dynamic_axes(output_names, task, postprocessing, output_layout)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (torchvision's ViT) is one fused operator ONNX has no mapping
    # for; off, the same attention is traced as the matrix products it is made of.
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape arithmetic, which is intended
        try:
            torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=int(opset),
                              input_names=["images"], output_names=output_names, dynamic_axes=dynamic,
                              do_constant_folding=True)
        except Exception as err:
            raise RecipeError(f"ONNX export of {type(model).__name__} failed: {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    result = ExportResult(
        str(path), task, "images", [batch_size if batch_size is not None else "batch", 3, *in_hw],
        str(dtype).replace("torch.", ""), output_names, int(opset), precision,
        asdict(spec) if preprocessing else None, post, _json_safe(getattr(model, "processing_params", None) or {}),
        selection)
    _write_metadata(path, result)
    logger.info("Exported %s (%s) to %s: input %s %s, outputs %s", type(model).__name__, task, path,
                result.input_dtype, result.input_shape, ", ".join(output_names))
    return result


def _build_graph(model: nn.Module, task: str, input_size: Sequence[int] | None, image_size: Sequence[int] | None,
                 preprocessing: bool, postprocessing: bool, output_layout: str, conf: float | None,
                 iou: float | None, max_predictions: int | None, precision: str
                 ) -> tuple[nn.Module, Any, dict[str, Any] | None, dict[str, Any] | None]:
    from super_recipes.export.graph import BatchedSelection, ExportedGraph, PreprocessingModule

    spec = preprocessing_for(model, task, input_size, image_size)
    model = copy.deepcopy(model).eval()
    if hasattr(model, "prep_model_for_conversion"):
        model.prep_model_for_conversion(input_size=[1, 3, *spec.model_hw])
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(dtype)
    pre = PreprocessingModule(spec, dtype) if preprocessing else None
    callback, selection, post, recorded = None, None, None, None
    if task == "detection":
        from super_recipes.detection.predict import _post_processor

        callback = _post_processor(model, 0.25 if conf is None else conf, 0.7 if iou is None else iou,
                                   100 if max_predictions is None else max_predictions)
        settings = callback.selection()
        recorded = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(settings).items()}
        if postprocessing:
            scale = spec.letterbox_scale if (preprocessing and spec.letterbox_scale) else 1.0
            limit = spec.image_hw if preprocessing else spec.model_hw
            selection = BatchedSelection(settings, output_layout, scale, limit)
            post = {"layout": output_layout, **recorded}
    return ExportedGraph(model, task, pre, callback, selection), spec, post, recorded


def _example_input(batch: int, hw: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (batch, 3, *hw), generator=generator, dtype=torch.uint8).to(device)
    return torch.rand((batch, 3, *hw), generator=generator).to(device, dtype)


def _output_names(task: str, postprocessing: bool, layout: str) -> list[str]:
    if task != "detection":
        return ["logits"]
    if not postprocessing:
        return ["boxes", "scores"]
    return ["detections"] if layout == "flat" else ["num_predictions", "boxes", "scores", "labels"]


def _dynamic_axes(names: list[str], task: str, postprocessing: bool, layout: str) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {"images": {0: "batch"}}
    for name in names:
        axes[name] = {0: "num_detections"} if (postprocessing and layout == "flat") else {0: "batch"}
    return axes


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _write_metadata(path: Path, result: ExportResult) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, result.metadata()
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The description :func:`export_model` stored in an ONNX file (a RecipeError when it has none)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise RecipeError(f"{path} was not exported by super_recipes (no '{METADATA_KEY}' metadata); export it with "
                      "model.export(...) or python -m super_recipes.export.")
