"""Checkpoints that never lose work: kill -9 at many points, resume, and end bit-for-bit where an uninterrupted
run ends; SIGTERM; failed saves; refusing a changed recipe."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from super_recipes import Trainer
from super_recipes.callbacks import Callback
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError
from tests.conftest import run_cli

# A test instrument, imported by every run so the recipes stay identical: it SIGKILLs or SIGTERMs its own
# process at the point named by environment variables (a SIGKILL cannot be caught, so this is a real kill).
# It also registers an augmentation that draws from python's, numpy's and torch's global RNGs, so exactness covers
# random augmentations (in worker processes with num_workers=2, in the training process with 0).
KILLER = textwrap.dedent("""
    import os, random, signal, time
    import numpy as np
    import torch
    from super_recipes.callbacks import Callback
    from super_recipes.registry import register_callback, register_transform

    @register_transform
    class RandomNoiseAllRNGs:
        def __call__(self, image):
            noise = random.random() + float(np.random.rand()) + float(torch.rand(()))
            return image * 0.9 + 0.1 * noise / 3

    def _maybe(event, context):
        if os.environ.get("KILL_EVENT") == event and int(os.environ["KILL_STEP"]) == context.global_step:
            os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))

    @register_callback
    class Killer(Callback):
        order = 1000
        def on_train_batch_end(self, context):
            if context.is_optimizer_step:
                if os.environ.get("STEP_LOG"):  # which optimizer steps this process took
                    with open(os.environ["STEP_LOG"], "a") as f:
                        print(context.global_step, file=f)
                time.sleep(float(os.environ.get("STEP_SLEEP", 0)))  # slower, never different
                _maybe("train", context)
        def on_validation_batch_end(self, context):
            _maybe("valid", context)
        def on_epoch_end(self, context):
            _maybe("epoch_end", context)
""")

BASE = ["epochs=3", "training_hyperparams.max_train_batches=7", "training_hyperparams.max_valid_batches=2",
        "batch_size=16", "val_batch_size=50", "device=cpu", "imports=[killer]",
        "training_hyperparams.phase_callbacks=[Killer]",
        "training_hyperparams.ckpt_every_n_steps=2", "training_hyperparams.optimizer_params.momentum=0.9",
        "dataset_params.train_dataset_params.transforms=[ToFloatTensor,RandomNoiseAllRNGs,RandomHorizontalFlip]",
        "arch_params.dropout=0.2"]
EMA_COSINE = ["training_hyperparams.ema=true", "training_hyperparams.lr_mode=cosine",
              "training_hyperparams.lr_warmup_epochs=1", "training_hyperparams.batch_accumulate=2",
              "training_hyperparams.ema_params.decay=0.9"]


def _run(workdir: Path, args: list[str], kill: tuple[str, int, str] | None = None,
         step_log: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(workdir)}
    if kill:
        env.update(KILL_EVENT=kill[0], KILL_STEP=str(kill[1]), KILL_SIGNAL=kill[2])
    if step_log:
        env.update(STEP_LOG=str(step_log))
    return run_cli(args, cwd=workdir, env=env)


def _final_state(folder: Path) -> tuple[dict, list[dict]]:
    state = load_checkpoint(folder / "ckpt_latest.pth")
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    for row in rows:
        row.pop("epoch_time")  # wall time is the one column that cannot repeat
    return state, rows


def _assert_identical(a: dict, b: dict) -> None:
    for key in ("net", "ema_net"):
        assert (key in a) == (key in b)
        for name, tensor in a.get(key, {}).items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    assert a.get("ema_updates") == b.get("ema_updates") and a["global_step"] == b["global_step"]
    opt_a, opt_b = a["optimizer_state_dict"], b["optimizer_state_dict"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, buffers in opt_a["state"].items():
        for name, value in buffers.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), (index, name)


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "killer.py").write_text(KILLER)
    return tmp_path


# Kill points (event, global optimizer step): mid-epoch right after a step checkpoint, mid-epoch between two,
# during validation, at an epoch's end before its checkpoint, and several kills in one run.
PLAIN_KILLS = [[("valid", 7)], [("train", 3), ("train", 9), ("epoch_end", 14)]]
EMA_KILLS = [[("epoch_end", 4)], [("train", 3), ("valid", 8)]]


@pytest.mark.parametrize("config, kills", [
    ("plain", PLAIN_KILLS), ("ema_warmup_cosine", EMA_KILLS),
])
def test_sigkill_and_resume_is_bit_exact(workdir, config, kills):
    extra = EMA_COSINE if config != "plain" else ["num_workers=2"]
    reference = _run(workdir, [*BASE, *extra, f"ckpt_root_dir={workdir / 'ref'}"])
    assert reference.returncode == 0, reference.stderr
    expected_state, expected_rows = _final_state(workdir / "ref" / "shapes_resnet")
    assert len(expected_rows) == 3

    for i, kill_points in enumerate(kills):
        root = workdir / f"killed{i}"
        args = [*BASE, *extra, f"ckpt_root_dir={root}"]
        latest = root / "shapes_resnet" / "ckpt_latest.pth"
        for event, step in kill_points:
            killed = _run(workdir, args + (["resume=true"] if latest.exists() else []), kill=(event, step, "SIGKILL"))
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert latest.exists()
        resumed = _run(workdir, [*args, "resume=true"])
        assert resumed.returncode == 0, resumed.stderr
        assert "Resuming from" in resumed.stderr
        state, rows = _final_state(root / "shapes_resnet")
        _assert_identical(state, expected_state)
        assert rows == expected_rows


def test_sigkill_at_a_random_moment(workdir):
    """An external kill -9 at a random time (not at a chosen step) that lands mid-run, then resume: the resumed
    process takes only the steps after the checkpoint it found, and ends where an uninterrupted run ends."""
    args = [*BASE, "training_hyperparams.ckpt_every_n_steps=1"]
    total_steps = 3 * 7
    reference = _run(workdir, [*args, f"ckpt_root_dir={workdir / 'ref'}"])
    assert reference.returncode == 0, reference.stderr
    expected_state, expected_rows = _final_state(workdir / "ref" / "shapes_resnet")
    assert expected_state["global_step"] == total_steps

    root = workdir / "killed"
    # 50 ms per step keeps the ~20 steps after the first checkpoint longer than the longest random delay (0.6 s)
    # on any machine; the kill is random in time, and certain to land before the run ends.
    env = {**os.environ, "PYTHONPATH": str(workdir), "STEP_SLEEP": "0.05"}
    command = [sys.executable, "-m", "super_recipes.train_from_recipe", *args, f"ckpt_root_dir={root}"]
    process = subprocess.Popen(command, cwd=workdir, env=env, stderr=subprocess.DEVNULL)
    latest = root / "shapes_resnet" / "ckpt_latest.pth"
    deadline = time.monotonic() + 120
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.6))
    finished_before_the_kill = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not finished_before_the_kill and process.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(latest)
    assert 1 <= at_kill["global_step"] < total_steps  # a checkpoint from the middle of the run

    steps = workdir / "resumed_steps.txt"
    resumed = _run(workdir, [*args, f"ckpt_root_dir={root}", "resume=true"], step_log=steps)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stderr
    taken = [int(line) for line in steps.read_text().split()]
    assert taken == list(range(at_kill["global_step"] + 1, total_steps + 1))
    state, rows = _final_state(root / "shapes_resnet")
    _assert_identical(state, expected_state)
    assert rows == expected_rows


def test_sigterm_saves_and_says_how_to_resume(workdir):
    root = workdir / "term"
    args = [*BASE, "training_hyperparams.ckpt_every_n_steps=null", f"ckpt_root_dir={root}"]
    stopped = _run(workdir, args, kill=("train", 3, "SIGTERM"))
    assert stopped.returncode == 143, stopped.stderr
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert "SIGTERM" in last_line and "resume=true" in last_line and "Traceback" not in stopped.stderr
    state = load_checkpoint(root / "shapes_resnet" / "ckpt_latest.pth")
    assert state["global_step"] == 3 and state["resume"] == {**state["resume"], "epoch": 0, "batch": 3}

    resumed = _run(workdir, [*args, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    reference = _run(workdir, [*BASE, "training_hyperparams.ckpt_every_n_steps=null",
                               f"ckpt_root_dir={workdir / 'ref'}"])
    assert reference.returncode == 0
    _assert_identical(_final_state(root / "shapes_resnet")[0], _final_state(workdir / "ref" / "shapes_resnet")[0])


def test_ctrl_c_saves_and_exits_130(workdir):
    root = workdir / "int"
    stopped = _run(workdir, [*BASE, f"ckpt_root_dir={root}"], kill=("train", 5, "SIGINT"))
    assert stopped.returncode == 130, stopped.stderr
    assert "SIGINT" in stopped.stderr.strip().splitlines()[-1] and "Traceback" not in stopped.stderr
    assert load_checkpoint(root / "shapes_resnet" / "ckpt_latest.pth")["global_step"] == 5


def test_resume_refuses_a_changed_recipe_and_finishes_cleanly(workdir):
    root = workdir / "ckpt"
    args = [*BASE, "epochs=1", f"ckpt_root_dir={root}"]
    assert _run(workdir, args).returncode == 0

    changed = _run(workdir, [*args, "batch_size=8", "architecture=resnet18_cifar", "resume=true"])
    assert changed.returncode == 1 and "Traceback" not in changed.stderr
    assert "dataset_params.train_dataloader_params.batch_size: 16 in the checkpoint, 8 now" in changed.stderr
    assert "architecture" in changed.stderr and "resume_allow_changes" in changed.stderr

    finished = _run(workdir, [*args, "resume=true", "num_workers=0"])  # bookkeeping keys may change
    assert finished.returncode == 0 and "already finished 1 epochs" in finished.stderr

    extended = _run(workdir, [*args, "epochs=2", "resume=true"])  # a longer run is allowed
    assert extended.returncode == 0, extended.stderr
    assert load_checkpoint(root / "shapes_resnet" / "ckpt_latest.pth")["epoch"] == 1

    allowed = _run(workdir, [*args, "epochs=3", "lr=0.05", "resume=true",
                             "training_hyperparams.resume_allow_changes=true"])
    assert allowed.returncode == 0 and "changed keys" in allowed.stderr


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    result = run_cli(["resume=true", f"ckpt_root_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 1 and "nothing to resume" in result.stderr and "Traceback" not in result.stderr


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way while overwriting a checkpoint leaves the previous file byte for byte."""
    import super_recipes.engine.checkpoints as checkpoints

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    folder = tmp_path / "full"
    real_save, before = torch.save, {}

    class Snapshot(Callback):  # the files epoch 0 left, read before epoch 1 starts
        def on_train_loader_start(self, context):
            if context.epoch == 1:
                before.update({p.name: p.read_bytes() for p in folder.glob("ckpt_*.pth")})

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:  # overwriting epoch 0's files: half, then disk full
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    expected = r"Could not write .*ckpt_(latest|best).pth.*No space left.*previous checkpoint"
    with pytest.raises(RecipeError, match=expected):
        Trainer("full", tmp_path, device="cpu").train(
            model=torch.nn.Linear(4, 2), training_params={"max_epochs": 3, "silent_mode": True},
            train_loader=loader, valid_loader=loader, callbacks=[Snapshot()])
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert set(before) == {"ckpt_latest.pth", "ckpt_best.pth"}  # the failing write was an overwrite
    for name, content in before.items():
        assert (folder / name).read_bytes() == content, name
        assert load_checkpoint(folder / name)["epoch"] == 0
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
