"""``python -m super_recipes.export --checkpoint ckpt_best.pth --output model.onnx [options]``.

Rebuilds the trained model from its checkpoint (recipe, EMA weights when present, the validation preprocessing
and class names) and exports it with :func:`super_recipes.export.onnx_export.export_model`; prints what was
written (input, outputs) in one screen. Errors (no extra, a bad option, a failing export) are one message,
exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from super_recipes.errors import RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m super_recipes.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of a run (ckpt_best.pth...)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--batch-size", default="1", help="a number (static) or 'dynamic' (default 1)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="the model's input size")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="with --preprocessing: the uint8 images the graph takes (default: the input size)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--preprocessing", action="store_true", help="uint8 images in; resize/normalise inside")
    parser.add_argument("--postprocessing", action="store_true", help="detection: threshold + NMS inside")
    parser.add_argument("--layout", choices=("batched", "flat"), default="batched", help="detection outputs")
    parser.add_argument("--conf", type=float, help="detection score threshold (default 0.25)")
    parser.add_argument("--iou", type=float, help="detection NMS IoU threshold (default 0.7)")
    parser.add_argument("--max-predictions", type=int, help="detections per image (default 100)")
    parser.add_argument("--no-ema", action="store_true", help="export the trained weights, not their EMA")
    return parser


def model_for_export(checkpoint: str, use_ema: bool = True) -> Any:
    """The checkpoint's model with the preprocessing and class names of its recipe's validation data."""
    from super_recipes.export.processing import model_task
    from super_recipes.models.from_checkpoint import model_from_checkpoint, set_processing_params

    model, recipe = model_from_checkpoint(checkpoint, use_ema)
    task = model_task(model)
    if task == "detection":
        from super_recipes.detection.predict import processing_params_from_recipe
    elif task == "segmentation":
        from super_recipes.segmentation.predict import processing_params_from_recipe
    else:
        from super_recipes.models.predict import processing_params_from_recipe
    set_processing_params(model, processing_params_from_recipe(recipe))
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        from super_recipes.export.onnx_export import export_model
        from super_recipes.export.requirements import require_onnx

        require_onnx("Export to ONNX")
        if args.batch_size != "dynamic" and not args.batch_size.isdigit():
            raise RecipeError(f"--batch-size takes a number or 'dynamic', got {args.batch_size!r}.")
        model = model_for_export(args.checkpoint, use_ema=not args.no_ema)
        result = export_model(
            model, args.output, batch_size=None if args.batch_size == "dynamic" else int(args.batch_size),
            input_size=args.input_size, image_size=args.image_size, opset=args.opset, precision=args.precision,
            preprocessing=args.preprocessing, postprocessing=args.postprocessing, output_layout=args.layout,
            conf=args.conf, iou=args.iou, max_predictions=args.max_predictions)
    except (RecipeError, FileNotFoundError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {result.path}: {result.task}, input '{result.input_name}' {result.input_dtype} "
          f"{result.input_shape}, outputs {', '.join(result.output_names)} (opset {result.opset}, {result.precision})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
