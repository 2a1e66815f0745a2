"""``phase_callbacks: [{ModelConversionCheckCallback: {input_dimensions: [3, 224, 224]}}]``: check before training
that the model exports to ONNX and that ONNX Runtime computes what PyTorch computes.

At ``on_training_start`` the model (the EMA model when EMA is on: the one that is validated and saved) is
exported with the callback's options (:func:`super_recipes.export.onnx_export.export_model`, which fuses
re-parameterisable blocks on a copy), the file is run by ONNX Runtime on a seeded batch, and its outputs are
compared with the unfused PyTorch model in eval mode on the same batch: classification and segmentation logits,
detection boxes and class scores before NMS. A failing export or a difference beyond ``atol + rtol *
max|torch|`` (per output: relative to its scale) stops the run there, with a report of which output differs and
by how much, before any step is taken. With ``postprocessing`` the graph with NMS is exported and run as well
(its detections depend on the order of tied scores, which is why the numbers are compared before NMS).

The SuperGradients keys are accepted: ``model_name``, ``input_dimensions`` (C, H, W or H, W),
``primary_batch_size``, ``opset_version``, ``dynamic_axes`` (given: a dynamic batch), ``rtol``, ``atol``;
``input_names`` / ``output_names`` / ``do_constant_folding`` are taken for compatibility, but our graphs name
their own inputs and outputs (``images``; ``logits`` or ``boxes``, ``scores``) and always fold constants.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

if TYPE_CHECKING:  # torch and the exporter load when the check runs, not when recipes resolve callback names
    import torch

logger = logging.getLogger("super_recipes")

# fp16 rounds each layer's output to 11 significant bits: the defaults widen with it.
DEFAULT_TOLERANCES = {"fp32": (1e-3, 1e-5), "fp16": (2e-2, 1e-2)}


@register_callback
class ModelConversionCheckCallback(Callback):
    """Export to ONNX and compare ONNX Runtime with PyTorch before training (``phase_callbacks`` entry; see the
    module doc). ``output_path``: where the checked file is kept (default:
    ``<experiment_dir>/<model_name or architecture>_conversion_check.onnx``)."""

    def __init__(self, model_name: str | None = None, input_dimensions: Sequence[int] | None = None,
                 primary_batch_size: int = 2, opset_version: int = 17, dynamic_axes: Mapping[str, Any] | None = None,
                 rtol: float | None = None, atol: float | None = None, precision: str = "fp32",
                 preprocessing: bool = False, postprocessing: bool = False, output_layout: str = "batched",
                 output_path: str | None = None, do_constant_folding: bool = True,
                 input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None):
        if input_dimensions is not None:
            dims = [int(d) for d in input_dimensions]
            if len(dims) not in (2, 3) or (len(dims) == 3 and dims[0] != 3):
                raise RecipeError("ModelConversionCheckCallback: input_dimensions is (3, H, W) or (H, W), got "
                                  f"{list(input_dimensions)}.")
            input_dimensions = dims[-2:]
        if int(primary_batch_size) < 1:
            raise RecipeError("ModelConversionCheckCallback: primary_batch_size must be >= 1, got "
                              f"{primary_batch_size}.")
        if precision not in DEFAULT_TOLERANCES:
            raise RecipeError(f"ModelConversionCheckCallback: precision is fp32 or fp16, got {precision!r}.")
        self.model_name = model_name
        self.input_hw = input_dimensions
        self.batch_size = int(primary_batch_size)
        self.opset = int(opset_version)
        self.dynamic_batch = bool(dynamic_axes)
        self.precision = precision
        self.rtol, self.atol = (rtol if rtol is not None else DEFAULT_TOLERANCES[precision][0],
                                atol if atol is not None else DEFAULT_TOLERANCES[precision][1])
        self.preprocessing, self.postprocessing, self.output_layout = preprocessing, postprocessing, output_layout
        self.output_path = output_path
        if input_names or output_names or not do_constant_folding:
            logger.info("ModelConversionCheckCallback: input_names/output_names/do_constant_folding are accepted "
                        "for SuperGradients recipes; the exported graph names its own ('images'; 'logits' or "
                        "'boxes', 'scores') and folds constants.")

    def on_training_start(self, context: PhaseContext) -> None:
        from super_recipes.callbacks.averaging import unwrap_model

        model = unwrap_model(context.eval_net if context.eval_net is not None else context.net)
        report = check_conversion(model, self._path(context, model), batch_size=self.batch_size,
                                  input_size=self.input_hw, opset=self.opset, dynamic_batch=self.dynamic_batch,
                                  precision=self.precision, preprocessing=self.preprocessing,
                                  postprocessing=self.postprocessing, output_layout=self.output_layout,
                                  rtol=self.rtol, atol=self.atol, device=context.device)
        logger.info(report)

    def _path(self, context: PhaseContext, model: torch.nn.Module) -> Path:
        if self.output_path:
            return Path(self.output_path)
        name = self.model_name or type(model).__name__
        folder = Path(context.experiment_dir) if context.experiment_dir else Path(".")
        suffix = "" if context.is_rank_zero else f"_rank{_rank()}"  # ranks never write the same file
        return folder / f"{name}_conversion_check{suffix}.onnx"


def check_conversion(model: torch.nn.Module, path: str | Path, *, batch_size: int = 2,
                     input_size: Sequence[int] | None = None, opset: int = 17, dynamic_batch: bool = False,
                     precision: str = "fp32", preprocessing: bool = False, postprocessing: bool = False,
                     output_layout: str = "batched", rtol: float | None = None, atol: float | None = None,
                     device: Any = None) -> str:
    """Export ``model`` to ``path``, run it with ONNX Runtime and compare with PyTorch (the callback's work);
    returns a one-line summary, raises a RecipeError with the report when export fails or the outputs differ."""
    import numpy as np
    import torch

    from super_recipes.export.onnx_export import export_model
    from super_recipes.export.runtime import OnnxModel

    device = torch.device(device or next(model.parameters()).device)
    rtol = DEFAULT_TOLERANCES[precision][0] if rtol is None else rtol
    atol = DEFAULT_TOLERANCES[precision][1] if atol is None else atol
    options = dict(batch_size=None if dynamic_batch else batch_size, input_size=input_size, opset=opset,
                   precision=precision, preprocessing=preprocessing, device=device)
    where = f"ModelConversionCheckCallback ({type(model).__name__}, opset {opset}, {precision})"
    try:
        raw = export_model(model, path, **options)
        if postprocessing:
            with_nms = Path(path).with_name(Path(path).stem + "_nms.onnx")
            export_model(model, with_nms, postprocessing=True, output_layout=output_layout, **options)
    except RecipeError as err:
        raise RecipeError(f"{where}: export failed before training. {err}") from None
    onnx_model = OnnxModel(raw.path)
    example = _example(batch_size, raw.input_shape[-2:], raw.input_dtype)
    session_input = example.numpy()
    ort_outputs = onnx_model.session.run(None, {raw.input_name: session_input})
    if postprocessing:
        OnnxModel(with_nms).session.run(None, {raw.input_name: session_input})  # it must run on the same batch
    torch_outputs = _torch_outputs(model, raw, example, device)
    problems = []
    for name, ours, theirs in zip(raw.output_names, torch_outputs, ort_outputs, strict=True):
        ours_np = ours.detach().float().cpu().numpy()
        theirs_np = np.asarray(theirs, dtype=np.float32)
        if ours_np.shape != theirs_np.shape:
            problems.append(f"'{name}': ONNX Runtime shape {list(theirs_np.shape)}, PyTorch {list(ours_np.shape)}")
            continue
        # Relative to the output's scale, not to each value: float32 sums taken in another order differ by a
        # fraction of the largest values, which is far more than rtol of a value near zero.
        scale = float(np.abs(ours_np).max()) if ours_np.size else 0.0
        excess = np.abs(theirs_np - ours_np) - (atol + rtol * scale)
        if not np.isfinite(theirs_np).all() or (excess > 0).any():
            worst = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(excess), excess, np.inf))), excess.shape)
            bad = int((excess > 0).sum() + (~np.isfinite(theirs_np)).sum())
            problems.append(f"'{name}': {bad} of {ours_np.size} values differ by more than atol {atol:g} + rtol "
                            f"{rtol:g} x {scale:.3g} (its largest |value|); worst at {list(map(int, worst))}: "
                            f"ONNX Runtime {theirs_np[worst]:.6g}, PyTorch {ours_np[worst]:.6g}")
    if problems:
        raise RecipeError(f"{where}: ONNX Runtime and PyTorch disagree on a batch of {batch_size} "
                          f"(file kept at {raw.path}):\n  " + "\n  ".join(problems) +
                          "\nA traced graph freezes Python-side values (random numbers, data-dependent branches, "
                          "shapes computed from the input); look for them in the model's forward.")
    return (f"{where}: ONNX Runtime matches PyTorch on a batch of {batch_size} "
            f"(outputs {', '.join(raw.output_names)}; {raw.path})")


def _example(batch_size: int, hw: Sequence[int], dtype: str) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, 3, int(hw[0]), int(hw[1]))
    if dtype == "uint8":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator).to(torch.float16 if dtype == "float16" else torch.float32)


def _torch_outputs(model: torch.nn.Module, exported: Any, example: torch.Tensor, device: torch.device
                   ) -> list[torch.Tensor]:
    """The unfused model, in eval mode and float32, on ``example``, through what the graph adds around it."""
    import torch

    from super_recipes.export.graph import ExportedGraph, Preprocessing, PreprocessingModule

    reference = copy.deepcopy(model).eval().float()
    pre = None
    if exported.preprocessing:
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in exported.preprocessing.items()}
        pre = PreprocessingModule(Preprocessing(**spec))
    callback = None
    if exported.task == "detection":
        from super_recipes.detection.predict import _post_processor

        callback = _post_processor(reference, 0.25, 0.7, 100)
    graph = ExportedGraph(reference, exported.task, pre, callback).to(device).eval()
    with torch.no_grad():
        out = graph(example.to(device).float() if example.dtype == torch.float16 else example.to(device))
    return list(out) if isinstance(out, tuple | list) else [out]


def _rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
        else 0
