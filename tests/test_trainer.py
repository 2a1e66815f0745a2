"""The training loop through the Python API, on a tiny real problem: outputs, events, losses, metrics."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch
import torchmetrics

from super_recipes import Trainer
from super_recipes.callbacks import EVENTS, Callback
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss


class EventRecorder(Callback):
    def __init__(self):
        self.events: list[str] = []
        self.seen_context: dict = {}

    def __getattribute__(self, name):
        if name in EVENTS:
            def record(context, name=name):
                self.events.append(name)
                if name == "on_train_batch_loss_end":
                    self.seen_context = {"epoch": context.epoch, "batch_idx": context.batch_idx,
                                         "inputs": context.inputs, "loss_items": context.loss_items,
                                         "net": context.net, "optimizer": context.optimizer}
            return record
        return super().__getattribute__(name)


class EveryEvent(Callback):
    """Overrides every event (the dispatcher only calls overridden methods)."""


for _event in EVENTS:
    setattr(EveryEvent, _event, lambda self, context, _e=_event: self.log.append(_e))


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3)


def test_train_writes_outputs_and_learns(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    trainer = Trainer("exp", ckpt_root_dir=tmp_path, device="cpu")
    record = trainer.train(
        model=linear_model(),
        training_params={"max_epochs": 3, "initial_lr": 0.1, "optimizer": "SGD",
                         "optimizer_params": {"momentum": 0.9}, "silent_mode": True},
        train_loader=train_loader, valid_loader=valid_loader,
    )
    folder = tmp_path / "exp"
    assert record["valid/Accuracy"] > 0.9
    for name in ("ckpt_latest.pth", "ckpt_best.pth", "metrics.csv", "train.log"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"epoch", "lr", "train/CrossEntropyLoss", "valid/CrossEntropyLoss",
                            "valid/Accuracy", "epoch_time"}
    state = load_checkpoint(folder / "ckpt_latest.pth")
    assert {"net", "acc", "epoch", "optimizer_state_dict", "recipe"} <= set(state)
    assert state["epoch"] == 2 and state["acc"] == pytest.approx(max(float(r["valid/Accuracy"]) for r in rows))
    assert "Epoch 3/3" in (folder / "train.log").read_text()


def test_events_fire_in_order(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    recorder = EveryEvent()
    recorder.log = []
    Trainer("events", tmp_path, device="cpu").train(
        model=linear_model(), training_params={"max_epochs": 1, "max_train_batches": 2, "max_valid_batches": 1,
                                               "silent_mode": True, "save_model": False},
        train_loader=train_loader, valid_loader=valid_loader, callbacks=[recorder],
    )
    step = ["on_train_batch_start", "on_train_batch_loss_end", "on_train_batch_backward_end",
            "on_train_batch_gradient_step_start", "on_train_batch_gradient_step_end", "on_train_batch_end"]
    expected = (["on_training_start", "on_train_loader_start"] + step * 2 + ["on_train_loader_end",
                "on_validation_loader_start", "on_validation_batch_start", "on_validation_batch_end",
                "on_validation_loader_end", "on_validation_end_best_epoch", "on_epoch_end", "on_training_end"])
    assert recorder.log == expected


def test_context_carries_batch_state(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    seen = {}

    class Spy(Callback):
        def on_train_batch_loss_end(self, context):
            seen.update(epoch=context.epoch, batch=context.batch_idx, inputs=context.inputs.shape,
                        preds=context.preds.shape, items=context.loss_items.shape, net=context.net,
                        lr=context.optimizer.param_groups[0]["lr"], params=context.training_params.max_epochs)

    model = linear_model()
    Trainer("ctx", tmp_path, device="cpu").train(
        model=model, training_params={"max_epochs": 1, "max_train_batches": 1, "silent_mode": True,
                                      "initial_lr": 0.05},
        train_loader=train_loader, valid_loader=valid_loader, callbacks=[Spy()])
    assert seen == {"epoch": 0, "batch": 0, "inputs": (16, 8), "preds": (16, 3), "items": (1,), "net": model,
                    "lr": 0.05, "params": 1}


@register_loss("TwoPartTestLoss")
class TwoPartTestLoss(torch.nn.Module):
    component_names = ["ce", "l2"]

    def forward(self, preds, targets):
        ce = torch.nn.functional.cross_entropy(preds, targets)
        l2 = preds.pow(2).mean() * 1e-3
        return ce + l2, torch.stack([ce, l2]).detach()


def test_tuple_loss_items_are_logged_and_watchable(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    record = Trainer("tuple", tmp_path, device="cpu").train(
        model=linear_model(),
        training_params={"max_epochs": 2, "loss": "TwoPartTestLoss", "metric_to_watch": "ce",
                         "greater_metric_to_watch_is_better": False, "silent_mode": True},
        train_loader=train_loader, valid_loader=valid_loader)
    assert {"train/ce", "train/l2", "valid/ce", "valid/l2"} <= set(record)
    state = load_checkpoint(tmp_path / "tuple" / "ckpt_best.pth")
    assert state["metric_to_watch"] == "ce" and state["acc"] == pytest.approx(record["valid/ce"])


class ScriptedScore(torchmetrics.Metric):
    """A validation metric whose value at the n-th validation is preset, so a test chooses the best epoch."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.values, self.calls = list(values), 0
        self.add_state("seen", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds, targets):
        self.seen += len(targets)

    def compute(self):
        self.calls += 1
        return torch.tensor(self.values[self.calls - 1])


def _file_identity(path) -> tuple | None:
    """What changes when a file is written again: inode, modification time and content."""
    if not path.exists():
        return None
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_ckpt_best_holds_the_best_epoch_and_is_written_only_then(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    scores = [0.2, 0.7, 0.5, 0.6]  # best at epoch 1; epoch 3 improves on epoch 2 but not on the best
    seen = []  # ckpt_best.pth as each epoch ends (before that epoch's own files are written), then at the end

    class WatchBest(Callback):
        def on_epoch_end(self, context):
            seen.append(_file_identity(context.experiment_dir / "ckpt_best.pth"))

        def on_training_end(self, context):
            seen.append(_file_identity(context.experiment_dir / "ckpt_best.pth"))

    Trainer("best", tmp_path, device="cpu").train(
        model=linear_model(),
        training_params={"max_epochs": 4, "initial_lr": 0.1, "silent_mode": True, "save_ckpt_epoch_list": [1],
                         "valid_metrics_list": {"ScriptedScore": ScriptedScore(scores)},
                         "metric_to_watch": "ScriptedScore"},
        train_loader=train_loader, valid_loader=valid_loader, callbacks=[WatchBest()])
    folder = tmp_path / "best"
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [float(r["valid/ScriptedScore"]) for r in rows] == pytest.approx(scores)

    best, at_epoch_1 = load_checkpoint(folder / "ckpt_best.pth"), load_checkpoint(folder / "ckpt_epoch_1.pth")
    latest = load_checkpoint(folder / "ckpt_latest.pth")
    assert best["epoch"] == 1 and best["acc"] == pytest.approx(0.7)
    assert best["metrics"]["valid/ScriptedScore"] == pytest.approx(0.7)
    assert set(best["net"]) == set(at_epoch_1["net"])
    for name, tensor in best["net"].items():
        assert torch.equal(tensor, at_epoch_1["net"][name]), name
    assert latest["epoch"] == 3 and not torch.equal(latest["net"]["weight"], best["net"]["weight"])
    # written after epochs 0 and 1 only: unchanged from the end of epoch 1 to the end of training
    assert seen[0] is None and seen[1] is not None and seen[2] != seen[1]
    assert seen[2] == seen[3] == seen[4]


def test_unknown_metric_to_watch_is_refused_before_training(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    with pytest.raises(RecipeError, match="metric_to_watch 'Acuracy'.*Did you mean: Accuracy"):
        Trainer("bad", tmp_path, device="cpu").train(
            model=linear_model(), training_params={"metric_to_watch": "Acuracy", "silent_mode": True},
            train_loader=train_loader, valid_loader=valid_loader)
    assert not (tmp_path / "bad" / "ckpt_latest.pth").exists()


def test_unknown_training_param_is_refused(tmp_path, tiny_classification_loaders):
    train_loader, _ = tiny_classification_loaders
    with pytest.raises(RecipeError, match="training_hyperparams.max_epoch.*Did you mean: max_epochs"):
        Trainer("bad", tmp_path, device="cpu").train(
            model=linear_model(), training_params={"max_epoch": 2}, train_loader=train_loader)


def test_test_api_reports_metrics_and_loss(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    trainer = Trainer("t", tmp_path, device="cpu")
    model = linear_model()
    trainer.train(model=model, training_params={"max_epochs": 3, "silent_mode": True, "save_model": False},
                  train_loader=train_loader, valid_loader=valid_loader)
    results = trainer.test(model=model, test_loader=valid_loader, test_metrics_list=["Accuracy", "Top5"],
                           loss="CrossEntropyLoss")
    assert set(results) == {"test/Accuracy", "test/Top5", "test/CrossEntropyLoss"}
    assert results["test/Top5"] == 1.0 and results["test/Accuracy"] > 0.9


def test_top5_counts_targets_ranked_one_to_five_only(tmp_path):
    """8 classes, each target rank 1..8 equally often: top-5 is 5/8, top-1 1/8 (any other k gives another value)."""
    num_classes, n = 8, 64
    logits = torch.randn(n, num_classes, generator=torch.Generator().manual_seed(0))
    scores = logits.numpy()
    wanted_rank = np.arange(n) % num_classes  # 0-based rank of sample i's target
    targets = np.argsort(-scores, axis=1)[np.arange(n), wanted_rank]
    ranks = (scores > scores[np.arange(n), targets][:, None]).sum(axis=1) + 1  # 1 = highest score
    assert sorted(np.bincount(ranks).tolist()) == [0] + [n // num_classes] * num_classes
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, torch.as_tensor(targets)),
                                         batch_size=10)
    results = Trainer("top5", tmp_path, device="cpu").test(
        model=torch.nn.Identity(), test_loader=loader, test_metrics_list=["Accuracy", "Top5"])
    assert results["test/Top5"] == pytest.approx(np.mean(ranks <= 5)) and np.mean(ranks <= 5) == 5 / 8
    assert results["test/Accuracy"] == pytest.approx(np.mean(ranks == 1)) and np.mean(ranks == 1) == 1 / 8


def test_any_torchmetrics_class_and_mse_loss(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    record = Trainer("reg", tmp_path, device="cpu").train(
        model=torch.nn.Linear(4, 1),
        training_params={"max_epochs": 30, "loss": "MSELoss", "initial_lr": 0.05, "silent_mode": True,
                         "valid_metrics_list": ["MeanAbsoluteError"], "metric_to_watch": "MeanAbsoluteError",
                         "greater_metric_to_watch_is_better": False, "save_model": False},
        train_loader=loader, valid_loader=loader)
    assert record["valid/MeanAbsoluteError"] < 0.05
