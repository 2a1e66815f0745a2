"""Shared fixtures: tiny real data and helpers to run the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_classification_loaders():
    """A linearly separable 3-class problem: 96 train / 48 val samples of 8 features."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=generator) * 3

    def make(n: int) -> torch.utils.data.DataLoader:
        labels = torch.arange(n) % 3
        features = centers[labels] + torch.randn(n, 8, generator=generator) * 0.5
        dataset = torch.utils.data.TensorDataset(features, labels)
        return torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)

    return make(96), make(48)


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m super_recipes.train_from_recipe ARGS`` in ``cwd`` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "super_recipes.train_from_recipe", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def write_cifar10(root: Path, per_batch: int = 8, test_size: int = 16, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 in the real ``cifar-10-batches-py`` pickle format under ``root``; returns root."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> None:
        # The official files are Python 2 pickles whose str keys load as str with encoding="latin1".
        content = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(content, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test_size)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f)
    return root


@pytest.fixture
def tiny_cifar10(tmp_path) -> Path:
    """A tiny CIFAR-10 (40 train / 16 test images) in the real on-disk format."""
    return write_cifar10(tmp_path / "cifar10")
