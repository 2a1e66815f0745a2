"""Throughput benchmark with the ImageNet-21K-P model table's metrics: ``python -m super_recipes.benchmark``.

For each model (built with ``models.get(name, num_classes=1000)``) it finds the maximal training batch size
(doubling, then bisection: on CUDA until out of memory, on CPU until a step's peak resident memory would pass
``--memory-cap-gb``), then measures training and inference images/s at 90% of it, latency at batch 1 and peak
training memory, and prints the table in the seed's layout (``--csv`` also writes the rows)::

    python -m super_recipes.benchmark --models resnet50 mobilenet_v3_large vit_b_16 --device cuda --amp bf16
    python -m super_recipes.benchmark --models resnet50 --device cpu --max-batch 16 --steps 3 --warmup 1

The work is in :mod:`super_recipes.benchmarking`; this module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from super_recipes.benchmarking import BenchmarkSettings, benchmark_model, format_table, write_csv
from super_recipes.errors import RecipeError

# A CPU run has no out-of-memory error to stop at (the system swaps or kills the process first), so the search
# stops at a cap; 4 GB keeps a laptop or CI runner safe and still fits ResNet-50 at 224 with batch 16.
DEFAULT_CPU_CAP_GB = 4.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m super_recipes.benchmark", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="registered model names")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("bf16", "fp16"), help="torch.autocast dtype (fp16 adds a GradScaler)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--resolution", type=int, default=224, help="square input size")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--memory-cap-gb", type=float, default=None,
                        help=f"largest training memory allowed (default: {DEFAULT_CPU_CAP_GB:g} on CPU, "
                             "the whole device on CUDA)")
    parser.add_argument("--max-batch", type=int, default=4096, help="stop the batch search here")
    parser.add_argument("--min-batch", type=int, default=2, help="first batch tried (BatchNorm needs 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per figure (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before them")
    parser.add_argument("--num-classes", type=int, default=1000)
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    """Check the options and turn them into :class:`BenchmarkSettings` (a RecipeError names the bad one)."""
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise RecipeError(f"--device {args.device!r} is not a torch device ({err}).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available here; use --device cpu.")
    if args.amp == "fp16" and device.type != "cuda":
        raise RecipeError("--amp fp16 needs CUDA (fp16 training uses a GradScaler); use --amp bf16 on CPU.")
    for flag in ("resolution", "max_batch", "min_batch", "steps", "num_classes"):
        if getattr(args, flag) < 1:
            raise RecipeError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}.")
    if args.warmup < 0:
        raise RecipeError(f"--warmup must be 0 or more, got {args.warmup}.")
    cap = args.memory_cap_gb
    if cap is None and device.type == "cpu":
        cap = DEFAULT_CPU_CAP_GB
    if cap is not None and cap <= 0:
        raise RecipeError(f"--memory-cap-gb must be positive, got {cap}.")
    return BenchmarkSettings(
        device=device, resolution=args.resolution, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, max_batch=args.max_batch, min_batch=args.min_batch, memory_cap_gb=cap,
        steps=args.steps, warmup=args.warmup, num_classes=args.num_classes)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 with a one-line message on a user error)."""
    args = _parser().parse_args(argv)
    from super_recipes import models
    from super_recipes.registry import MODELS

    results = []
    try:
        settings = settings_from_args(args)
        for name in args.models:  # every name is checked before the first (slow) measurement
            MODELS.get(name)
        for name in args.models:
            _log(f"benchmarking {name} on {settings.device}")
            results.append(benchmark_model(
                name, lambda name=name: models.get(name, num_classes=settings.num_classes), settings, log=_log))
            if args.csv:  # rewritten after each model so a long run keeps what it measured
                write_csv(args.csv, results)
    except RecipeError as err:
        print("Error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()), file=sys.stderr)
        return 1
    print(format_table(results, settings))
    if args.csv:
        _log(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
