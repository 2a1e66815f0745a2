"""The throughput benchmark: batch search (exact, with injected predicates), the CPU memory cap, the command line."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from super_recipes import benchmark
from super_recipes.benchmarking import CSV_COLUMNS, capped_fits, find_max_batch, measure_batch
from super_recipes.errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--resolution", "32", "--max-batch", "8", "--steps", "2", "--warmup", "1"]


def _recording(threshold: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def fits(batch: int) -> bool:
        calls.append(batch)
        return batch <= threshold

    return calls, fits


def test_batch_search_finds_the_largest_batch_that_fits() -> None:
    for limit in (1, 2, 7, 8, 50, 4096):
        for start in (1, 2, 3):
            if start > limit:
                continue
            for threshold in (0, 1, 2, 3, 5, 7, 8, 9, 13, 64, 100, 320, 488, 1000, 5000):
                # Oracle by exhaustive scan: the largest batch in [start, limit] that fits, 0 when none does.
                oracle = max((b for b in range(start, limit + 1) if b <= threshold), default=0)
                calls, fits = _recording(threshold)
                assert find_max_batch(fits, limit=limit, start=start) == oracle, (limit, start, threshold)
                assert max(calls) <= limit
                first_failure = next((b for b in calls if b > threshold), None)
                if first_failure is not None:  # nothing above a batch that failed is ever tried again
                    assert all(b < first_failure for b in calls[calls.index(first_failure) + 1:])
                assert len(calls) <= 2 * math.ceil(math.log2(limit / start + 1)) + 2
                assert len(calls) == len(set(calls))


def test_batch_search_rejects_bad_bounds() -> None:
    with pytest.raises(RecipeError, match="start"):
        find_max_batch(lambda b: True, limit=4, start=8)


def test_measure_batch_is_ninety_percent() -> None:
    assert [measure_batch(b) for b in (320, 488, 160, 10, 2, 1, 0)] == [288, 439, 144, 9, 2, 1, 0]


def test_memory_cap_stops_before_running_a_batch_predicted_over_it() -> None:
    # A step's memory grows linearly: 0.5 GB of weights and state plus 0.125 GB per image (exact in binary).
    run: list[int] = []

    def step_memory(batch: int) -> float:
        run.append(batch)
        return 0.5 + 0.125 * batch

    for cap in (0.55, 0.7, 1.0, 2.0, 3.3, 12.9):
        run.clear()
        oracle = max((b for b in range(2, 257) if 0.5 + 0.125 * b <= cap), default=0)
        assert find_max_batch(capped_fits(step_memory, cap), limit=256, start=2) == oracle
        # Growing past every batch run so far into memory over the cap happens once at most: before two points
        # are known. After that the line predicts exactly; bisection below a batch already run is safe.
        new_highs_over = [b for i, b in enumerate(run) if b > max(run[:i], default=0) and 0.5 + 0.125 * b > cap]
        assert len(new_highs_over) <= 1, run


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def test_cli_in_process_writes_table_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.csv"
    assert benchmark.main(["--models", "resnet_tiny_cifar", *TINY, "--csv", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| Backbone | Maximal <br> batch size | Maximal <br> training speed <br>(img/sec) |" in table
    assert "| resnet_tiny_cifar | ≥8 |" in table  # the tiny model fits the default CPU cap at every batch
    (row,) = _read_csv(out)
    assert row["model"] == "resnet_tiny_cifar" and row["device"].startswith("cpu")
    assert int(row["max_batch"]) == 8 and row["hit_max_batch"] == "true" and int(row["batch"]) == 7
    assert (row["resolution"], row["amp"], row["channels_last"], row["compiled"]) == ("32", "fp32", "false", "false")
    for column in ("train_img_s", "infer_img_s", "latency_ms", "peak_memory_gb", "params_m"):
        assert 0 < float(row[column]) < 1e6, column
    assert float(row["peak_memory_gb"]) < benchmark.DEFAULT_CPU_CAP_GB
    assert float(row["params_m"]) == pytest.approx(0.142, abs=0.01)  # 78k + a 1000-class head


def test_cli_bf16_channels_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.csv"
    args = ["--models", "resnet_tiny_cifar", "--device", "cpu", "--resolution", "32", "--max-batch", "4",
            "--steps", "1", "--warmup", "0", "--amp", "bf16", "--channels-last", "--csv", str(out)]
    assert benchmark.main(args) == 0
    (row,) = _read_csv(out)
    assert (row["amp"], row["channels_last"], row["max_batch"], row["batch"]) == ("bf16", "true", "4", "4")
    assert "bf16, channels-last" in capsys.readouterr().out


def test_cli_memory_cap_too_small_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(["--models", "resnet_tiny_cifar", *TINY, "--memory-cap-gb", "0.000001"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: Model 'resnet_tiny_cifar' does not train at batch 2")
    assert "--memory-cap-gb" in err[-1]


@pytest.mark.parametrize("args, needle", [
    (["--amp", "fp16"], "--amp fp16 needs CUDA"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--memory-cap-gb", "-1"], "--memory-cap-gb must be positive"),
])
def test_cli_bad_options(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(["--models", "resnet18", "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "super_recipes.benchmark", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_module_command_line(tmp_path: Path) -> None:
    out = tmp_path / "bench.csv"
    done = _run(["--models", "resnet_tiny_cifar", "--device", "cpu", "--resolution", "32", "--max-batch", "3",
                 "--steps", "1", "--warmup", "0", "--csv", str(out)])
    assert done.returncode == 0, done.stderr
    assert "| resnet_tiny_cifar | ≥3 |" in done.stdout and "Notes" in done.stdout
    assert "maximal batch 3; timing at batch 3" in done.stderr  # progress goes to stderr, the table to stdout
    assert _read_csv(out)[0]["max_batch"] == "3"


def test_unknown_model_is_a_one_line_error_with_close_names() -> None:
    done = _run(["--models", "resnet_tiny_cifar", "resnet5O", "--device", "cpu"])
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()  # checked before any model is measured
    assert line.startswith("Error: Unknown model 'resnet5O'.") and "resnet50" in line
