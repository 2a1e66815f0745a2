"""Measure one model: maximal training batch, training and inference images/s at 90% of it, latency, memory.

Speeds follow the ImageNet-21K-P table's protocol: synthetic inputs already on the device (no data loading),
a training step is forward + cross-entropy + backward + SGD step, inference is ``eval()`` under ``no_grad``;
each figure is the median over timed iterations after warm-up ones, with the device synchronised around each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from super_recipes.benchmarking.memory import MemoryMeter, release_memory
from super_recipes.benchmarking.search import find_max_batch, measure_batch
from super_recipes.errors import RecipeError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Allocation failures that are not torch.OutOfMemoryError: cuDNN/cuBLAS workspaces, CPU's allocator.
_OOM_MARKERS = ("out of memory", "ALLOC_FAILED", "can't allocate memory")


@dataclass(frozen=True)
class BenchmarkSettings:
    """What the command line sets; see ``python -m super_recipes.benchmark --help``."""

    device: torch.device
    resolution: int = 224
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    max_batch: int = 4096
    min_batch: int = 2
    memory_cap_gb: float | None = None
    steps: int = 10
    warmup: int = 3
    num_classes: int = 1000


@dataclass
class BenchmarkResult:
    """One table row; the field names are the CSV columns."""

    model: str
    params_m: float
    max_batch: int
    hit_max_batch: bool  # the search stopped at --max-batch, so the true maximum is larger
    batch: int
    train_img_s: float
    infer_img_s: float
    latency_ms: float
    peak_memory_gb: float
    device: str
    resolution: int
    amp: str
    channels_last: bool
    compiled: bool


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MARKERS))


def _logits(output: Any) -> Tensor:
    # GoogLeNet/Inception return namedtuples with auxiliary logits in training mode; HF-style models `.logits`.
    if isinstance(output, tuple | list):
        return output[0]
    return getattr(output, "logits", output)


def capped_fits(run_step: Callable[[int], float], cap_gb: float) -> Callable[[int], bool]:
    """A ``fits`` predicate: a batch fits when one training step's peak memory (``run_step(batch)``, GB) <= cap.

    Memory grows linearly with the batch, so once two batches are measured the next, larger one is predicted
    from the line through the nearest two below it and not run when the prediction exceeds the cap: on CPU the
    step would really allocate that memory (there is no out-of-memory error to catch before swapping or the
    system's OOM killer). Batches between one that fitted and one that did not are run (they are safe).
    """
    measured: dict[int, float] = {}

    def fits(batch: int) -> bool:
        below = sorted(b for b in measured if b < batch)
        if len(below) >= 2 and batch > max(measured):
            b1, b2 = below[-2:]
            slope = (measured[b2] - measured[b1]) / (b2 - b1)
            if measured[b2] + slope * (batch - b2) > cap_gb:
                return False
        measured[batch] = run_step(batch)
        return measured[batch] <= cap_gb

    return fits


class _Runner:
    """A model with its optimizer, mixed-precision and memory-format settings, and timed steps."""

    def __init__(self, model: nn.Module, settings: BenchmarkSettings):
        self.settings = settings
        self.device = settings.device
        model = model.to(self.device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if settings.compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.criterion = nn.CrossEntropyLoss()
        dtype = AMP_DTYPES.get(settings.amp or "")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else nullcontext
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" else None

    def batch(self, size: int) -> tuple[Tensor, Tensor]:
        images = torch.randn(size, 3, self.settings.resolution, self.settings.resolution, device=self.device)
        if self.settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, self.settings.num_classes, (size,), device=self.device)
        return images, labels

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, images: Tensor, labels: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.criterion(_logits(self.forward(images)), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def infer_step(self, images: Tensor, _labels: Tensor | None = None) -> None:
        with torch.no_grad(), self.autocast():
            self.forward(images)

    def median_seconds(self, step: Callable[[Tensor, Tensor], None], batch: int) -> float:
        """Median wall time of ``steps`` timed calls after ``warmup`` untimed ones, synchronised around each."""
        images, labels = self.batch(batch)
        for _ in range(self.settings.warmup):
            step(images, labels)
        times = []
        for _ in range(max(1, self.settings.steps)):
            self.sync()
            start = time.perf_counter()
            step(images, labels)
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def probe(self, batch: int, meter: MemoryMeter) -> float | None:
        """Peak memory (GB) of training steps at ``batch``, or None when it runs out of memory."""
        self.model.train()
        meter.reset_peak()
        ok = True
        try:
            images, labels = self.batch(batch)
            # Two steps on CUDA: the first allocates the momentum buffers, the second is the steady state.
            for _ in range(2 if self.device.type == "cuda" else 1):
                self.train_step(images, labels)
            self.sync()
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _is_oom(error):
                raise
            ok = False  # cleaned up below, once the traceback (and the frames holding tensors) is released
        images = labels = None
        peak = meter.peak_gb()
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            release_memory(self.device)
            return None
        return peak


def benchmark_model(name: str, build: Callable[[], nn.Module], settings: BenchmarkSettings,
                    log: Callable[[str], None] = print) -> BenchmarkResult:
    """Find ``name``'s maximal training batch, then time training, inference and batch-1 latency."""
    meter = MemoryMeter(settings.device)
    meter.set_baseline()
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the fastest kernels per shape, as a training run would use
    runner = _Runner(build(), settings)
    params = sum(p.numel() for p in runner.model.parameters()) / 1e6
    cap = settings.memory_cap_gb

    def memory_at(batch: int) -> float:
        peak = runner.probe(batch, meter)
        log(f"  {name}: batch {batch}: " + ("out of memory" if peak is None else f"peak {peak:.2f} GB"))
        return float("inf") if peak is None else peak

    fits = capped_fits(memory_at, cap if cap is not None else float("inf"))
    max_batch = find_max_batch(fits, limit=settings.max_batch, start=min(settings.min_batch, settings.max_batch))
    if max_batch == 0:
        raise RecipeError(f"Model '{name}' does not train at batch {settings.min_batch} at resolution "
                          f"{settings.resolution} within the memory available"
                          + (f" (--memory-cap-gb {cap})" if cap is not None else "") + "; raise the cap or "
                          "lower --resolution.")
    batch = measure_batch(max_batch)
    log(f"  {name}: maximal batch {max_batch}; timing at batch {batch}")
    runner.model.train()
    meter.reset_peak()
    train_s = runner.median_seconds(runner.train_step, batch)
    peak = meter.peak_gb()
    runner.optimizer.zero_grad(set_to_none=True)
    runner.model.eval()
    infer_s = runner.median_seconds(runner.infer_step, batch)
    latency_s = runner.median_seconds(runner.infer_step, 1)
    result = BenchmarkResult(
        model=name, params_m=round(params, 3), max_batch=max_batch, hit_max_batch=max_batch == settings.max_batch,
        batch=batch, train_img_s=round(batch / train_s, 2), infer_img_s=round(batch / infer_s, 2),
        latency_ms=round(1000 * latency_s, 3), peak_memory_gb=round(peak, 3), device=device_name(settings.device),
        resolution=settings.resolution, amp=settings.amp or "fp32", channels_last=settings.channels_last,
        compiled=settings.compile)
    return result  # the runner's memory is released by the next model's set_baseline()


def device_name(device: torch.device) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (2 threads)``: what the figures were measured on."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"
