"""The training loop through the Python API, on a tiny real problem: outputs, events, losses, metrics."""

from __future__ import annotations

import csv

import pytest
import torch

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
