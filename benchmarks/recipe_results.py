"""Final validation figure and wall time of the shipped offline recipes: the numbers README.md and the recipe
headers quote (``shapes_resnet``: validation accuracy; ``shapes_yolox``: validation mAP@0.50;
``shapes_segmentation``: validation mIoU; ``shapes_yolo_nas_s``: validation mAP@0.50).

    python benchmarks/recipe_results.py                                  # both recipes, as shipped
    python benchmarks/recipe_results.py --recipes shapes_yolox           # one of them
    python benchmarks/recipe_results.py --quick                          # smoke run: 1 epoch of 2 batches
    python benchmarks/recipe_results.py --recipes shapes_resnet device=cpu num_workers=2   # extra overrides

Each recipe is trained from scratch as a user runs it, ``python -m super_recipes.train_from_recipe
--config-name=NAME``, in a fresh temporary folder (its working directory, so ``shapes_yolox`` generates its
data set there: data generation is part of the wall time) with ``ckpt_root_dir`` inside it. The figures are read
from the run's ``metrics.csv`` (last epoch, and every epoch); the wall time is the whole process, start-up
included. Quote figures measured on an idle machine: the load average before each run is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# recipe -> (metrics.csv column, how the README names it, formatting of a value)
RECIPES = {
    "shapes_resnet": ("valid/Accuracy", "val accuracy", lambda v: f"{100 * v:.1f}%"),
    "shapes_yolox": ("valid/mAP@0.50", "val mAP@0.50", lambda v: f"{v:.3f}"),
    "shapes_segmentation": ("valid/IoU", "val mIoU", lambda v: f"{v:.3f}"),
    "shapes_yolo_nas_s": ("valid/mAP@0.50", "val mAP@0.50", lambda v: f"{v:.3f}"),
}
# --quick: one epoch of 2 training batches (and 2 validation batches); warmup shortened to fit shapes_yolox
QUICK = {
    "shapes_resnet": ["epochs=1", "training_hyperparams.max_train_batches=2",
                      "training_hyperparams.max_valid_batches=2"],
    "shapes_yolox": ["epochs=1", "training_hyperparams.max_train_batches=2", "training_hyperparams.max_valid_batches=2",
                     "training_hyperparams.lr_warmup_steps=1"],
    "shapes_segmentation": ["epochs=1", "training_hyperparams.max_train_batches=2",
                            "training_hyperparams.max_valid_batches=2"],
    "shapes_yolo_nas_s": ["epochs=1", "training_hyperparams.max_train_batches=2",
                          "training_hyperparams.max_valid_batches=2", "training_hyperparams.lr_warmup_steps=1"],
}


def run_recipe(name: str, overrides: list[str]) -> dict:
    """Train ``name`` in a fresh folder; returns its figures, wall time and (on failure) the error output."""
    column, _, _ = RECIPES[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                        if p)}
    with tempfile.TemporaryDirectory(prefix=f"recipe_results_{name}_") as folder:
        command = [sys.executable, "-m", "super_recipes.train_from_recipe", f"--config-name={name}",
                   f"ckpt_root_dir={Path(folder) / 'ckpt'}", *overrides]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        result = {"recipe": name, "wall_s": wall, "load_before": load, "returncode": done.returncode,
                  "command": " ".join(["python", *command[1:4], *overrides])}
        metrics = sorted(Path(folder, "ckpt").glob("*/metrics.csv"))
        if done.returncode != 0 or len(metrics) != 1:
            result["error"] = done.stderr[-3000:] or f"{len(metrics)} metrics.csv files"
            return result
        rows = list(csv.DictReader(metrics[0].open()))
        per_epoch = [float(row[column]) for row in rows if row.get(column) not in (None, "")]
        result.update(per_epoch=per_epoch, final=per_epoch[-1] if per_epoch else float("nan"), epochs=len(rows))
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES),
                        help="recipes to train (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: epochs=1, 2 training and 2 validation batches (figures meaningless)")
    parser.add_argument("overrides", nargs="*", help="extra command-line overrides for every recipe")
    args = parser.parse_args(argv)

    import torch  # only for the report: the runs are separate processes

    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}{', QUICK (not the shipped schedule)' if args.quick else ''}")
    results = []
    for name in args.recipes:
        print(f"# training {name} ...", file=sys.stderr, flush=True)
        results.append(run_recipe(name, [*(QUICK[name] if args.quick else []), *args.overrides]))
    print("| recipe | figure | final | per epoch | epochs | wall time | load before |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for result in results:
        _, label, fmt = RECIPES[result["recipe"]]
        if "error" in result:
            failed = True
            print(f"| `{result['recipe']}` | {label} | FAILED (exit {result['returncode']}) | | | "
                  f"{result['wall_s']:.0f} s | {result['load_before']:.2f} |")
            continue
        per_epoch = ", ".join(fmt(v) for v in result["per_epoch"])
        print(f"| `{result['recipe']}` | {label} | {fmt(result['final'])} | {per_epoch} | {result['epochs']} | "
              f"{result['wall_s']:.0f} s | {result['load_before']:.2f} |")
    for result in results:
        print(f"# {result['recipe']}: {result['command']}")
        if "error" in result:
            print(f"# {result['recipe']} failed:\n{result['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
