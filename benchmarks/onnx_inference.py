"""CPU inference time of an exported ONNX file under ONNX Runtime against the same model in PyTorch.

    python benchmarks/onnx_inference.py [--models resnet50 yolox_s] [--batch 1] [--repeats 20] [--threads 2]

Each model is built with random weights, put in eval mode and exported with ``model.export`` (fp32, static
batch, no pre- or post-processing: the same network on both sides; RepVGG-style blocks would be fused in the
file only, so pick models without them for a like-for-like figure). Both run on the same seeded input with the
same number of threads (``torch.set_num_threads`` and ONNX Runtime's intra-op threads), PyTorch under
``torch.inference_mode``; the two alternate call by call after ``--warmup`` calls each, and the medians are
printed with their ratio. Outputs are checked equal (1e-4 relative) first, so the figure is for the same work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from super_recipes import models

INPUT_SIZES = {"yolox_s": (640, 640)}  # the detectors' published evaluation size; classifiers 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "yolox_s"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    print("| model | input | PyTorch (ms) | ONNX Runtime (ms) | ONNX Runtime / PyTorch |")
    print("|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = models.get(name, num_classes=80 if name.startswith("yolo") else 1000).eval()
        hw = INPUT_SIZES.get(name, (224, 224))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.onnx"
            model.export(path, batch_size=args.batch, input_size=hw)
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            images = torch.rand(args.batch, 3, *hw, generator=torch.Generator().manual_seed(1))
            feed = {session.get_inputs()[0].name: images.numpy()}
            with torch.inference_mode():
                expected = model(images)
            expected = expected[0] if isinstance(expected, tuple | list) else expected
            got = torch.from_numpy(session.run(None, feed)[0])
            if name.startswith("yolo"):  # the file's boxes are x1, y1, x2, y2; the decoded output starts cx, cy
                expected, got = expected[..., :2], (got[..., :2] + got[..., 2:4]) / 2
            error = float((got - expected).abs().max() / expected.abs().max())
            assert error <= 1e-4, f"{name}: ONNX Runtime differs from PyTorch by {error:.2e} (relative)"
            torch_ms, ort_ms = [], []
            with torch.inference_mode():
                for step in range(args.warmup + args.repeats):
                    start = time.perf_counter()
                    model(images)
                    middle = time.perf_counter()
                    session.run(None, feed)
                    end = time.perf_counter()
                    if step >= args.warmup:
                        torch_ms.append((middle - start) * 1000)
                        ort_ms.append((end - middle) * 1000)
        t, o = statistics.median(torch_ms), statistics.median(ort_ms)
        print(f"| {name} | {args.batch}x3x{hw[0]}x{hw[1]} | {t:.1f} | {o:.1f} | {o / t:.2f} |")
    print(f"\n{args.threads} thread(s), fp32, medians of {args.repeats} alternating calls after {args.warmup} each.")


if __name__ == "__main__":
    main()
