"""The benchmark's table (the layout of the ImageNet-21K-P model table) and its CSV file."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from super_recipes.benchmarking.measure import BenchmarkResult, BenchmarkSettings


def _seed_v100() -> dict[str, tuple[str, int, int, int]]:
    """The ImageNet-21K-P table's throughput columns (maximal batch, training and inference images/s at 90% of
    it, one NVIDIA V100 at 224x224; kept with the table's rows in :mod:`super_recipes.models.imagenet21k`), keyed
    by the table's names, their ``timm/`` names and our torchvision networks of the same architecture."""
    from super_recipes.models.imagenet21k import IMAGENET21K_P, RESNET50_21K_P

    rows = {**IMAGENET21K_P, "resnet50": RESNET50_21K_P}
    same_network = {"mobilenet_v3_large": "mobilenetv3_large_100", "vit_b_16": "vit_base_patch16_224"}
    names = {**{name: name for name in rows}, **{f"timm/{name}": name for name in rows}, **same_network}
    return {ours: (rows[row].label, rows[row].v100_max_batch, rows[row].v100_train_img_s, rows[row].v100_infer_img_s)
            for ours, row in names.items()}


SEED_V100: dict[str, tuple[str, int, int, int]] = _seed_v100()

HEADERS = ("Backbone", "Maximal <br> batch size", "Maximal <br> training speed <br>(img/sec)",
           "Maximal <br> inference speed <br>(img/sec)", "Latency <br> batch 1 <br>(ms)",
           "Peak <br> training memory <br>(GB)")
CSV_COLUMNS = tuple(field.name for field in dataclasses.fields(BenchmarkResult))


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def format_table(results: Sequence[BenchmarkResult], settings: BenchmarkSettings) -> str:
    """A Markdown table with the seed's header style and centred columns, then notes like the seed's."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(" :------------: " for _ in HEADERS) + "|"]
    for r in results:
        batch = f"≥{r.max_batch}" if r.hit_max_batch else str(r.max_batch)
        cells = (r.model, batch, _number(r.train_img_s), _number(r.infer_img_s), _number(r.latency_ms),
                 f"{r.peak_memory_gb:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    device = results[0].device if results else str(settings.device)
    lines += ["", "Notes",
              f"- Measured on {device} at input resolution {settings.resolution}, {settings.amp or 'fp32'}"
              f"{', channels-last' if settings.channels_last else ''}"
              f"{', torch.compile' if settings.compile else ''}; training and inference speeds with 90% of the "
              f"maximal batch size (median of {settings.steps} steps after {settings.warmup} warm-up ones)."]
    if settings.memory_cap_gb is not None:
        lines.append(f"- Maximal batch size: the largest whose training step stays within "
                     f"{settings.memory_cap_gb:g} GB (--memory-cap-gb)"
                     + (", measured as the process's peak resident memory." if settings.device.type == "cpu"
                        else "."))
    if any(r.hit_max_batch for r in results):
        lines.append(f"- ≥N: the search stopped at --max-batch {settings.max_batch}; the true maximum is larger.")
    seeds = [(r.model, SEED_V100[r.model]) for r in results if r.model in SEED_V100]
    for model, (seed_name, batch, train, infer) in seeds:
        lines.append(f"- Seed table (NVIDIA V100, 224): {seed_name} ({model}): maximal batch {batch}, "
                     f"training {train} img/sec, inference {infer} img/sec.")
    return "\n".join(lines)


def write_csv(path: str | Path, results: Sequence[BenchmarkResult]) -> None:
    """One row per model, the columns of :data:`CSV_COLUMNS` (numbers unformatted, booleans as true/false)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            row = dataclasses.asdict(result)
            writer.writerow({k: str(v).lower() if isinstance(v, bool) else v for k, v in row.items()})
