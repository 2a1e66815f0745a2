"""The Python API with built objects (the form both SuperGradients guides use): loss, optimizer, metrics,
callbacks and schedules as objects; how such a run is recorded and resumed; SuperGradients' Phase callbacks;
the overridable units of the loop."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics.classification import MulticlassF1Score

from super_recipes import Trainer
from super_recipes.callbacks import Callback, Phase, PhaseCallback
from super_recipes.callbacks.base import CallbackDefinitionError
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError
from super_recipes.metrics import Accuracy, Top5


class SmoothedCrossEntropy(torch.nn.CrossEntropyLoss):
    """A user loss object with its own argument, as in the 1.x walkthrough."""

    def __init__(self, smooth_eps: float = 0.1):
        super().__init__(label_smoothing=smooth_eps)
        self.smooth_eps = smooth_eps


class RateRecorder(Callback):
    def __init__(self):
        self.rates: list[tuple[int, float]] = []

    def on_train_batch_gradient_step_end(self, context):
        self.rates.append((context.epoch, context.optimizer.param_groups[0]["lr"]))


def halving(initial_lr, epoch, iter, max_epoch, iters_per_epoch):
    return initial_lr * 0.5 ** epoch


def linear_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 3)


def accuracy_of(model: torch.nn.Module, loader) -> float:
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return right / len(loader.dataset)


def test_training_params_take_objects_and_the_run_is_recorded(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    recorder = RateRecorder()
    model = linear_model()
    params = {"max_epochs": 2, "initial_lr": 0.2, "loss": SmoothedCrossEntropy(0.05), "optimizer": torch.optim.SGD,
              "optimizer_params": {"momentum": 0.9}, "train_metrics_list": [Accuracy()],
              "valid_metrics_list": [Accuracy(), "Top5", MulticlassF1Score(num_classes=3)],
              "phase_callbacks": [recorder], "lr_mode": "function", "lr_schedule_function": halving,
              "metric_to_watch": "MulticlassF1Score", "silent_mode": True}
    record = Trainer("objects", tmp_path, device="cpu").train(model=model, training_params=params,
                                                              train_loader=train_loader, valid_loader=valid_loader)
    steps = len(train_loader)
    assert recorder.rates == [(0, 0.2)] * steps + [(1, 0.1)] * steps
    assert record["valid/Accuracy"] == pytest.approx(accuracy_of(model, valid_loader))
    assert {"train/Accuracy", "valid/Top5", "valid/MulticlassF1Score", "valid/SmoothedCrossEntropy"} <= set(record)
    recipe = OmegaConf.load(tmp_path / "objects" / "recipe.yaml")
    assert recipe.architecture == "torch.nn.modules.linear.Linear"
    hp = recipe.training_hyperparams
    assert hp.loss == {"_target_": f"{__name__}.SmoothedCrossEntropy", "smooth_eps": 0.05}
    assert hp.optimizer == "torch.optim.sgd.SGD" and hp.lr_schedule_function == f"{__name__}.halving"
    assert hp.valid_metrics_list[0]["_target_"] == "super_recipes.metrics.Accuracy"
    assert hp.valid_metrics_list[1] == "Top5" and hp.phase_callbacks[0]["_target_"].endswith("RateRecorder")
    checkpoint = load_checkpoint(tmp_path / "objects" / "ckpt_latest.pth")
    assert OmegaConf.create(checkpoint["training_params"]).loss.smooth_eps == 0.05
    assert checkpoint["run"]["training_hyperparams"]["loss"] == f"{__name__}.SmoothedCrossEntropy"


def test_resume_with_objects_compares_them_by_qualified_name(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders

    def run(loss: torch.nn.Module, epochs: int, **extra) -> dict:
        return Trainer("resumed", tmp_path, device="cpu").train(
            model=linear_model(), training_params={"max_epochs": epochs, "loss": loss, "silent_mode": True,
                                                   "valid_metrics_list": [Accuracy()], **extra},
            train_loader=train_loader, valid_loader=valid_loader)

    run(SmoothedCrossEntropy(0.1), 1)
    first = load_checkpoint(tmp_path / "resumed" / "ckpt_latest.pth")["net"]
    resumed = run(SmoothedCrossEntropy(0.1), 2, resume=True)
    assert resumed["epoch"] == 1
    uninterrupted = Trainer("straight", tmp_path, device="cpu").train(
        model=linear_model(), training_params={"max_epochs": 2, "loss": SmoothedCrossEntropy(0.1),
                                               "silent_mode": True, "valid_metrics_list": [Accuracy()]},
        train_loader=train_loader, valid_loader=valid_loader)
    assert resumed["valid/Accuracy"] == uninterrupted["valid/Accuracy"]
    assert not torch.equal(first["weight"], load_checkpoint(tmp_path / "resumed" / "ckpt_latest.pth")["net"]["weight"])
    with pytest.raises(RecipeError, match=r"training_hyperparams.loss.*SmoothedCrossEntropy.*CrossEntropyLoss"):
        run(torch.nn.CrossEntropyLoss(), 3, resume=True)


def test_optimizer_instance_and_scheduler_instance(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    model = linear_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    recorder = RateRecorder()
    trainer = Trainer("instances", tmp_path, device="cpu")
    trainer.train(model=model, training_params={"max_epochs": 3, "optimizer": optimizer, "lr_mode": scheduler,
                                                "phase_callbacks": [recorder], "silent_mode": True},
                  train_loader=train_loader, valid_loader=valid_loader)
    assert trainer.optimizer is optimizer
    steps = len(train_loader)
    assert [lr for _, lr in recorder.rates] == pytest.approx([0.01] * steps + [0.005] * steps + [0.0025] * steps)


def test_scheduler_class_with_arguments(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    recorder = RateRecorder()
    Trainer("class", tmp_path, device="cpu").train(
        model=linear_model(), training_params={
            "max_epochs": 2, "initial_lr": 0.4, "phase_callbacks": [recorder], "silent_mode": True,
            "lr_mode": {torch.optim.lr_scheduler.StepLR: {"step_size": 1, "gamma": 0.25}}},
        train_loader=train_loader, valid_loader=valid_loader)
    assert sorted({lr for _, lr in recorder.rates}) == pytest.approx([0.1, 0.4])


def test_optimizer_instance_mistakes(tmp_path, tiny_classification_loaders):
    train_loader, _ = tiny_classification_loaders
    other = torch.optim.SGD(torch.nn.Linear(8, 3).parameters(), lr=0.1)
    with pytest.raises(RecipeError, match="not parameters of the model"):
        Trainer("x", tmp_path, device="cpu").train(model=linear_model(), training_params={"optimizer": other},
                                                   train_loader=train_loader)
    model = linear_model()
    mine = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RecipeError, match=r"would be ignored: optimizer_params"):
        Trainer("x", tmp_path, device="cpu").train(
            model=model, training_params={"optimizer": mine, "optimizer_params": {"momentum": 0.9}},
            train_loader=train_loader)
    with pytest.raises(RecipeError, match=r"initial_lr \(the optimizer's rates are \[0.1\]\)"):
        Trainer("x", tmp_path, device="cpu").train(model=model, training_params={"optimizer": mine,
                                                                                 "initial_lr": 0.5},
                                                   train_loader=train_loader)


def test_test_takes_metric_and_loss_objects(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    model = linear_model()
    trainer = Trainer("test", tmp_path, device="cpu")
    trainer.train(model=model, training_params={"max_epochs": 2, "silent_mode": True, "save_model": False},
                  train_loader=train_loader, valid_loader=valid_loader)
    loss = SmoothedCrossEntropy(0.2)
    results = trainer.test(model, valid_loader, test_metrics_list=[Accuracy(), "Top5"], loss=loss)
    with torch.no_grad():
        expected_loss = sum(float(loss(model(x), y)) * len(y) for x, y in valid_loader) / len(valid_loader.dataset)
    assert results["test/Accuracy"] == pytest.approx(accuracy_of(model, valid_loader))
    assert results["test/SmoothedCrossEntropy"] == pytest.approx(expected_loss, rel=1e-6)
    assert results["test/Top5"] == 1.0


def test_named_metrics_and_one_object_in_both_lists(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    shared = Accuracy()
    model = linear_model()
    record = Trainer("named", tmp_path, device="cpu").train(
        model=model, training_params={"max_epochs": 2, "silent_mode": True, "train_metrics_list": [shared],
                                      "valid_metrics_list": {"top1": shared, "top5": Top5()},
                                      "metric_to_watch": "top1"},
        train_loader=train_loader, valid_loader=valid_loader)
    assert record["valid/top1"] == pytest.approx(accuracy_of(model, valid_loader))
    assert "valid/top5" in record and "train/Accuracy" in record


# --------------------------------------------------------------------------------- SuperGradients callbacks
class EpochAccuracy(PhaseCallback):
    """Written the SuperGradients way: a phase and __call__."""

    def __init__(self):
        super().__init__(Phase.VALIDATION_EPOCH_END)
        self.seen: list[tuple[int, float]] = []

    def __call__(self, context):
        self.seen.append((context.epoch, context.metrics_dict["Accuracy"]))


class Counter(PhaseCallback):
    def __init__(self, phase):
        super().__init__(phase)
        self.calls = 0
        self.context = None

    def __call__(self, context):
        self.calls += 1
        self.context = context


def test_phase_callbacks_run_at_their_phase(tmp_path, tiny_classification_loaders):
    train_loader, valid_loader = tiny_classification_loaders
    accuracy = EpochAccuracy()
    counters = {phase: Counter(phase) for phase in (Phase.PRE_TRAINING, Phase.TRAIN_EPOCH_START,
                                                    Phase.TRAIN_BATCH_END, Phase.TRAIN_BATCH_STEP,
                                                    Phase.TRAIN_EPOCH_END, Phase.VALIDATION_BATCH_END,
                                                    Phase.POST_TRAINING, Phase.TEST_BATCH_END, Phase.TEST_END)}
    model = linear_model()
    trainer = Trainer("phases", tmp_path, device="cpu")
    record = trainer.train(model=model, training_params={"max_epochs": 2, "silent_mode": True, "batch_accumulate": 2,
                                                         "phase_callbacks": [accuracy, *counters.values()]},
                           train_loader=train_loader, valid_loader=valid_loader)
    batches, valid_batches = len(train_loader), len(valid_loader)
    assert [epoch for epoch, _ in accuracy.seen] == [0, 1]
    assert accuracy.seen[-1][1] == pytest.approx(record["valid/Accuracy"])
    calls = {phase.value: counter.calls for phase, counter in counters.items()}
    assert calls == {"PRE_TRAINING": 1, "TRAIN_EPOCH_START": 2, "TRAIN_BATCH_END": 2 * batches,
                     "TRAIN_BATCH_STEP": 2 * math.ceil(batches / 2), "TRAIN_EPOCH_END": 2,
                     "VALIDATION_BATCH_END": 2 * valid_batches, "POST_TRAINING": 1, "TEST_BATCH_END": 0,
                     "TEST_END": 0}
    context = counters[Phase.TRAIN_BATCH_END].context
    assert context.criterion is trainer.loss_fn and context.ckpt_dir == tmp_path / "phases"
    assert context.loss_log_items is context.loss_items and context.sg_logger is not None
    test_end = Counter(Phase.TEST_END)
    trainer.test(model, valid_loader, callbacks=[test_end])
    assert test_end.calls == 1 and test_end.context.metrics_dict == {"Accuracy": pytest.approx(
        accuracy_of(model, valid_loader))}


def test_an_unknown_phase_is_refused():
    with pytest.raises(RecipeError, match="Did you mean: VALIDATION_EPOCH_END"):
        Counter("VALIDATION_EPOCH_ENDS")


def test_a_misspelt_event_is_refused_when_the_class_is_defined():
    with pytest.raises(CallbackDefinitionError, match=r"on_epoch_ends is not a callback event.*on_epoch_end"):
        class Misspelt(Callback):  # noqa: F841
            def on_epoch_ends(self, context):
                pass


def test_update_params_is_the_overridable_optimizer_step(tmp_path, tiny_classification_loaders):
    train_loader, _ = tiny_classification_loaders

    class FrozenTrainer(Trainer):
        """Backpropagates a zero loss: with plain SGD nothing may change."""

        calls = 0

        def update_params(self, ctx, callbacks, loss, group_size, is_step):
            FrozenTrainer.calls += 1
            super().update_params(ctx, callbacks, loss * 0.0, group_size, is_step)

    model = linear_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FrozenTrainer("frozen", tmp_path, device="cpu").train(
        model=model, training_params={"max_epochs": 2, "silent_mode": True, "valid_metrics_list": []},
        train_loader=train_loader)
    assert FrozenTrainer.calls == 2 * len(train_loader)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert load_checkpoint(tmp_path / "frozen" / "ckpt_latest.pth")["global_step"] == 2 * len(train_loader)


def test_training_metrics_resume_mid_epoch_through_their_public_state(tmp_path, tiny_classification_loaders):
    """A SIGTERM mid-epoch saves the partial states of the training metrics (a summing one and a concatenating
    one); the resumed epoch reports what an uninterrupted run reports."""
    import csv
    import os
    import signal

    from torchmetrics.classification import MulticlassAUROC

    from super_recipes.engine.interrupts import TrainingInterrupted

    train_loader, valid_loader = tiny_classification_loaders

    class SigtermAt(Callback):
        def on_train_batch_gradient_step_end(self, context):
            if context.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    def run(name: str, callbacks=(), **extra) -> None:
        Trainer(name, tmp_path, device="cpu").train(
            model=linear_model(), training_params={
                "max_epochs": 2, "silent_mode": True, "train_metrics_list": [Accuracy(), MulticlassAUROC(3)],
                "valid_metrics_list": [Accuracy()], **extra},
            train_loader=train_loader, valid_loader=valid_loader, callbacks=callbacks)

    run("straight")
    with pytest.raises(TrainingInterrupted):
        run("interrupted", [SigtermAt()])
    assert load_checkpoint(tmp_path / "interrupted" / "ckpt_latest.pth")["resume"] == {
        "epoch": 0, "batch": 3, "lrs": {"lr": 0.1}, "elapsed": pytest.approx(0, abs=5), "loss_names":
        ["CrossEntropyLoss"]}
    run("interrupted", resume=True)

    def rows(name: str) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "epoch_time"}
                for row in csv.DictReader((tmp_path / name / "metrics.csv").open())]

    assert rows("interrupted") == rows("straight")
    assert {"train/Accuracy", "train/MulticlassAUROC"} <= set(rows("straight")[0])
