"""Command line: ``python -m super_recipes.predict --checkpoint PATH --source PATH [--output DIR]``.

Rebuilds the model of a trained experiment from its checkpoint (recipe, EMA weights when present, the
validation preprocessing and class names) and runs it on an image, a folder of images or several paths. A
detection model prints one line per image (file, number of detections, most frequent classes) and writes the
annotated images to ``--output``; a segmentation model (an architecture of super_recipes.segmentation, a model
class with SegmentationPredictMixin, or Seg* validation transforms) prints the classes present with their share
of the pixels and writes the mask overlays there as PNG (``--masks``: the class-index masks too); a classifier
prints its three most probable classes per image and writes the images labelled with the best one. ``--conf`` and
``--iou`` apply to detection only, ``--alpha`` and ``--masks`` to segmentation. ``--checkpoint model.onnx``
runs a file written by ``python -m super_recipes.export`` with ONNX Runtime instead (``--no-ema`` then does
nothing: the file holds the weights it was exported with; thresholds inside its graph, if any, were fixed there).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from super_recipes.errors import RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m super_recipes.predict", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of a run (ckpt_best.pth, ckpt_latest.pth) or an exported .onnx file")
    parser.add_argument("--source", required=True, nargs="+", help="image file(s) or folder(s) of images")
    parser.add_argument("--output", default="predictions", help="folder for the annotated images")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum confidence (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights instead of their EMA")
    parser.add_argument("--alpha", type=float, default=0.5, help="segmentation: overlay opacity (default 0.5)")
    parser.add_argument("--masks", action="store_true",
                        help="segmentation: also write each class-index mask as <name>_mask.png")
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
    try:
        from super_recipes.export import is_exported_file

        task, checkpoint = _exported_task(args.checkpoint) if is_exported_file(args.checkpoint) \
            else _checkpoint_task(args.checkpoint)
    except (RecipeError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    if task == "segmentation":
        return _main_segmentation(args, checkpoint)
    if task == "classification":
        return _main_classification(args, checkpoint)
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


def _exported_task(path: str) -> tuple[str, str]:
    from super_recipes.export.runtime import exported_task

    return exported_task(path), path


def _checkpoint_task(path: str) -> tuple[str, dict | None]:
    """``segmentation`` or ``classification`` with the loaded checkpoint when its recipe trains one, else
    ``detection`` (whose loader reads the file again and reports what is wrong with it)."""
    import torch

    from super_recipes.engine.checkpoints import load_checkpoint
    from super_recipes.models.from_checkpoint import checkpoint_recipe

    try:
        # Memory-mapped: a detection checkpoint is read again by its own loader, so this look costs no copy.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, missing, corrupt...: load_checkpoint says which, in its words
        state = load_checkpoint(path)
    if not isinstance(state, dict):
        state = load_checkpoint(path)
    if not state.get("recipe"):
        return "detection", None  # the detection path reports the missing recipe as it always has
    recipe = checkpoint_recipe(state, path)
    if is_segmentation_recipe(recipe):
        return "segmentation", state
    return ("classification", state) if is_classification_recipe(recipe) else ("detection", None)


def is_classification_recipe(recipe: dict) -> bool:
    """Whether a recipe trains a classifier: a registered architecture from neither task package nor with a
    task's predict mixin or post-prediction callback, validated without detection or segmentation transforms."""
    from super_recipes.detection.predict import DetectionPredictMixin
    from super_recipes.registry import MODELS
    from super_recipes.segmentation.predict import SegmentationPredictMixin, validation_transforms

    try:
        factory = MODELS.get(str(recipe.get("architecture")))
    except RecipeError:
        return False  # an architecture of the recipe's own imports: the detection path, as before
    if str(getattr(factory, "__module__", "")).startswith(("super_recipes.detection", "super_recipes.segmentation")):
        return False
    if isinstance(factory, type) and (issubclass(factory, DetectionPredictMixin | SegmentationPredictMixin)
                                      or hasattr(factory, "get_post_prediction_callback")):
        return False
    return not any(name.startswith(("Detection", "Seg")) for name, _ in validation_transforms(recipe))


def is_segmentation_recipe(recipe: dict) -> bool:
    """Whether a recipe trains a segmentation model: its architecture is registered by
    :mod:`super_recipes.segmentation` or is a class with ``SegmentationPredictMixin``, or its validation
    transforms are segmentation transforms (``Seg*``)."""
    from super_recipes.registry import MODELS
    from super_recipes.segmentation.predict import SegmentationPredictMixin, validation_transforms

    try:
        factory = MODELS.get(str(recipe.get("architecture")))
    except RecipeError:
        factory = None  # the detection path reports the unknown name
    if str(getattr(factory, "__module__", "")).startswith("super_recipes.segmentation."):
        return True
    if isinstance(factory, type) and issubclass(factory, SegmentationPredictMixin):
        return True
    return any(name.startswith("Seg") for name, _ in validation_transforms(recipe))


def describe_segmentation(prediction: object, top: int = 5) -> str:
    """``file: road 41.2%, car 12.0%, ... (+N more)`` for one :class:`SegmentationPrediction`."""
    fractions = list(prediction.class_fractions().items())  # type: ignore[attr-defined]
    shown = ", ".join(f"{name} {100 * share:.1f}%" for name, share in fractions[:top])
    more = f" (+{len(fractions) - top} more)" if len(fractions) > top else ""
    label = prediction.source or prediction.name  # type: ignore[attr-defined]
    return f"{label}: {shown}{more}"


def describe_classification(prediction: object, top: int = 3) -> str:
    """``file: cat 87.3% (dog 9.1%, bird 2.0%)`` for one :class:`ClassificationPrediction`."""
    (best, share), *others = prediction.top(top)  # type: ignore[attr-defined]
    rest = ", ".join(f"{name} {100 * p:.1f}%" for name, p in others)
    label = prediction.source or prediction.name  # type: ignore[attr-defined]
    return f"{label}: {best} {100 * share:.1f}%" + (f" ({rest})" if rest else "")


def _main_classification(args: argparse.Namespace, checkpoint: dict | str) -> int:
    from super_recipes.models.predict import ImagesClassificationPrediction, load_model_for_prediction, predict

    try:
        model = load_model_for_prediction(checkpoint, device=args.device, use_ema=not args.no_ema)
        source = args.source[0] if len(args.source) == 1 else list(args.source)
        result = predict(model, source, batch_size=args.batch_size)
    except (RecipeError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    predictions = result if isinstance(result, ImagesClassificationPrediction) \
        else ImagesClassificationPrediction([result])
    for prediction in predictions:
        print(describe_classification(prediction))
    paths = predictions.save(args.output)
    print(f"{len(paths)} labelled image(s) written to {args.output}")
    return 0


def _main_segmentation(args: argparse.Namespace, checkpoint: dict | str) -> int:
    from super_recipes.segmentation.predict import ImagesSegmentationPrediction, load_model_for_prediction, predict

    try:
        model = load_model_for_prediction(checkpoint, device=args.device, use_ema=not args.no_ema)
        source = args.source[0] if len(args.source) == 1 else list(args.source)
        result = predict(model, source, batch_size=args.batch_size)
    except (RecipeError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    predictions = result if isinstance(result, ImagesSegmentationPrediction) else ImagesSegmentationPrediction([result])
    for prediction in predictions:
        print(describe_segmentation(prediction))
    paths = predictions.save(args.output, alpha=args.alpha, save_mask=args.masks)
    print(f"{len(paths)} mask overlay(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
