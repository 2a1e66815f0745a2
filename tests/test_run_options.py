"""The guides' remaining training parameters: precise BN, the run's environment files, TensorBoard, optimizer
state on resume, pre-prediction callbacks, and ``resume: auto`` for preemptible clusters."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
import warnings
from importlib import metadata

import pytest
import torch

from super_recipes import Trainer
from super_recipes.callbacks import Callback
from super_recipes.engine.checkpoints import load_checkpoint


def loader(n: int = 64, batch_size: int = 16, shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator) * 3 + 1
    labels = torch.arange(n) % 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=batch_size,
                                       shuffle=shuffle)


def bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))


def train(tmp_path, model=None, name: str = "run", callbacks=(), train_loader=None, **params) -> dict:
    model = model if model is not None else bn_model()
    if params.get("valid_metrics_list") == []:
        params["metric_to_watch"] = "CrossEntropyLoss"
    return Trainer(name, tmp_path, device="cpu").train(
        model=model, training_params={"silent_mode": True, **params},
        train_loader=train_loader if train_loader is not None else loader(),
        valid_loader=loader(32, seed=1), callbacks=callbacks)


def test_precise_bn_recomputes_the_statistics_on_training_batches(tmp_path):
    train_loader = loader()  # not shuffled: the first two batches are the first 32 samples
    model = bn_model()
    seen = {}

    class Capture(Callback):
        def on_validation_loader_start(self, context):
            norm = context.eval_net[0]
            seen.update(mean=norm.running_mean.clone(), var=norm.running_var.clone())

    train(tmp_path, model, train_loader=train_loader, callbacks=[Capture()], precise_bn=True,
          precise_bn_batch_size=32, max_epochs=1)
    batches = [x for x, _ in list(train_loader)[:2]]
    # momentum=None in BatchNorm is the plain average of the batches' statistics (unbiased variance).
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(seen["mean"], expected_mean, atol=1e-6)
    assert torch.allclose(seen["var"], expected_var, atol=1e-5)
    assert model[0].momentum == 0.1  # the layer's own setting is back

    without = {}

    class CaptureDefault(Callback):
        def on_validation_loader_start(self, context):
            without["mean"] = context.eval_net[0].running_mean.clone()

    train(tmp_path, name="plain", callbacks=[CaptureDefault()], max_epochs=1)
    assert not torch.allclose(without["mean"], expected_mean, atol=1e-3)


def test_installed_packages_and_full_log(tmp_path):
    class Noisy(Callback):
        def on_training_start(self, context):
            warnings.warn("a library warning", UserWarning, stacklevel=1)
            logging.getLogger("some.library").info("a library message")

        def on_epoch_end(self, context):
            if context.epoch == 1:
                raise RuntimeError("boom at epoch 2")

    with pytest.raises(RuntimeError, match="boom"):
        train(tmp_path, callbacks=[Noisy()], max_epochs=3, log_installed_packages=True, save_full_train_log=True)
    folder = tmp_path / "run"
    packages = (folder / "installed_packages.txt").read_text().splitlines()
    assert f"torch=={metadata.version('torch')}" in packages and f"numpy=={metadata.version('numpy')}" in packages
    full = (folder / "full_train_log.log").read_text()
    for text in ("a library warning", "some.library: a library message", "Epoch 1/3", "RuntimeError: boom at epoch 2",
                 "Traceback"):
        assert text in full, text
    assert "Traceback" not in (folder / "train.log").read_text()
    assert logging.getLogger().level == logging.WARNING  # the process's logging is as it was


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launch_tensorboard_serves_the_run_and_stops_with_it(tmp_path):
    port = _free_port()
    answered = {}

    class Probe(Callback):
        def on_train_loader_start(self, context):
            if context.epoch:
                return
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and "status" not in answered:
                try:
                    with urllib.request.urlopen(f"http://localhost:{port}/", timeout=2) as response:
                        answered["status"] = response.status
                except OSError:
                    time.sleep(0.5)

    train(tmp_path, callbacks=[Probe()], max_epochs=1, launch_tensorboard=True, tensorboard_port=port)
    assert answered.get("status") == 200
    assert f"TensorBoard: http://localhost:{port}/" in (tmp_path / "run" / "train.log").read_text()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "TensorBoard still running after training"


def test_load_opt_params_false_restarts_the_optimizer_state(tmp_path):
    states = []

    class OptimizerState(Callback):
        def on_training_start(self, context):
            states.append(len(context.optimizer.state))

    params = {"optimizer_params": {"momentum": 0.9}, "valid_metrics_list": []}
    train(tmp_path, max_epochs=1, **params)
    train(tmp_path, callbacks=[OptimizerState()], max_epochs=2, resume=True, **params)
    train(tmp_path, callbacks=[OptimizerState()], max_epochs=3, resume=True, load_opt_params=False, **params)
    # A momentum buffer per parameter when the optimizer state comes back; none without load_opt_params.
    assert states == [len(list(bn_model().parameters())), 0]
    assert load_checkpoint(tmp_path / "run" / "ckpt_latest.pth")["epoch"] == 2


def test_pre_prediction_callback_changes_every_training_batch(tmp_path):
    calls = []

    def blank_inputs(inputs, targets, batch_idx):
        calls.append(batch_idx)
        return torch.zeros_like(inputs), targets

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    weight = model.weight.detach().clone()
    train(tmp_path, model, max_epochs=2, pre_prediction_callback=blank_inputs, valid_metrics_list=[])
    assert calls == [0, 1, 2, 3] * 2
    assert torch.equal(model.weight, weight)  # zero inputs: only the bias learns


def test_multiscale_pre_prediction_resizes_images_and_boxes_and_saves_its_size():
    from super_recipes.detection.multiscale import DetectionMultiscalePrePredictionCallback
    from super_recipes.registry import PROCESSING, resolve_callable

    multiscale = resolve_callable(PROCESSING, {"DetectionMultiscalePrePredictionCallback": {
        "multiscale_range": 2, "image_size_steps": 32, "change_frequency": 3}})
    assert isinstance(multiscale, DetectionMultiscalePrePredictionCallback)
    images = torch.rand(2, 3, 128, 256)
    targets = torch.tensor([[0, 1, 64.0, 32.0, 20.0, 10.0]])
    torch.manual_seed(3)
    sizes = []
    for batch_idx in range(7):
        resized, scaled = multiscale(images, targets, batch_idx)
        height, width = resized.shape[-2:]
        sizes.append((height, width))
        assert height % 32 == 0 and 64 <= height <= 192 and width == 2 * height
        expected = torch.tensor([[0, 1, 64.0 * width / 256, 32.0 * height / 128, 20.0 * width / 256,
                                  10.0 * height / 128]])
        assert torch.allclose(scaled, expected)
        if batch_idx == 4:
            saved = multiscale.state_dict()
    assert sizes[0] == sizes[1] == sizes[2] and sizes[3] == sizes[4] == sizes[5]
    # Resumed mid-group at batch 5: the size in force comes back with the callable's state.
    fresh = DetectionMultiscalePrePredictionCallback(2, 32, 3)
    fresh.load_state_dict(saved)
    assert fresh(images, targets, 5)[0].shape[-2:] == sizes[5]


def test_resume_auto_starts_fresh_then_resumes(tmp_path):
    first = train(tmp_path, max_epochs=1, resume="auto")
    assert first["epoch"] == 0
    # A run killed before its first checkpoint left only its logs: auto starts over.
    train(tmp_path, name="killed_early", max_epochs=1)
    (tmp_path / "killed_early" / "ckpt_latest.pth").unlink()
    (tmp_path / "killed_early" / "ckpt_best.pth").unlink()
    again = train(tmp_path, name="killed_early", max_epochs=1, resume="auto")
    assert again["epoch"] == 0 and (tmp_path / "killed_early" / "ckpt_latest.pth").is_file()
    resumed = train(tmp_path, max_epochs=3, resume="auto")
    assert resumed["epoch"] == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Resuming from" in log and "starting a fresh run" in log
    with pytest.raises(Exception, match="does not exist"):
        train(tmp_path, name="never_ran", max_epochs=1, resume=True)
