"""Command line: ``python -m super_recipes.predict --checkpoint PATH --source PATH [--output DIR]``.

Rebuilds the model of a trained experiment from its checkpoint (recipe, EMA weights when present, the
validation preprocessing and class names), detects objects in an image, a folder of images or several paths,
prints one line per image (file, number of detections, most frequent classes) and writes the annotated images
to ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from super_recipes.errors import RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m super_recipes.predict", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of a run (ckpt_best.pth, ckpt_latest.pth)")
    parser.add_argument("--source", required=True, nargs="+", help="image file(s) or folder(s) of images")
    parser.add_argument("--output", default="predictions", help="folder for the annotated images")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum confidence (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights instead of their EMA")
    return parser


def describe(prediction: object, top: int = 3) -> str:
    """``file: N detections (class xN, ...)`` for one :class:`ImageDetectionPrediction`."""
    counts = Counter(prediction.label_names()).most_common(top)  # type: ignore[attr-defined]
    classes = ", ".join(f"{name} x{n}" for name, n in counts)
    label = prediction.source or prediction.name  # type: ignore[attr-defined]
    return f"{label}: {len(prediction)} detections" + (f" ({classes})" if classes else "")  # type: ignore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 with a one-line message on a user error)."""
    args = _parser().parse_args(argv)
    from super_recipes.detection.predict import ImagesDetectionPrediction, load_model_for_prediction

    try:
        model = load_model_for_prediction(args.checkpoint, device=args.device, use_ema=not args.no_ema)
        source = args.source[0] if len(args.source) == 1 else list(args.source)
        result = model.predict(source, conf=args.conf, iou=args.iou, batch_size=args.batch_size) \
            if hasattr(model, "predict") else _predict(model, source, args)
    except (RecipeError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    predictions = result if isinstance(result, ImagesDetectionPrediction) else ImagesDetectionPrediction([result])
    for prediction in predictions:
        print(describe(prediction))
    paths = predictions.save(args.output)
    print(f"{len(paths)} annotated image(s) written to {args.output}")
    return 0


def _predict(model: object, source: object, args: argparse.Namespace) -> object:
    # A model class that does not inherit DetectionPredictMixin still works through the function.
    from super_recipes.detection.predict import predict

    return predict(model, source, conf=args.conf, iou=args.iou, batch_size=args.batch_size)  # type: ignore


if __name__ == "__main__":
    sys.exit(main())
