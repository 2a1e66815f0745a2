"""Built-in callbacks on real (tiny) training runs: EarlyStop, LRMonitor and best-model averaging."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from super_recipes import Trainer
from super_recipes.callbacks import Callback, EarlyStop, LRMonitor, PhaseContext
from super_recipes.callbacks.averaging import AVERAGE_MODEL, SNAPSHOTS, BestModelsAveraging, build_model_averaging
from super_recipes.config.training_params import parse_training_params
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError

QUIET = {"silent_mode": True, "save_model": False}  # each test turns on what it checks
# Too small to flip any prediction, so the validation accuracy never changes (a rate of 0 means "frozen").
FROZEN_LR = 1e-9


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3)


def bn_model() -> torch.nn.Module:
    """Has a non-float buffer (BatchNorm's num_batches_tracked) that averaging must not average."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def train(tmp_path, loaders, params, callbacks=(), model=None):
    trainer = Trainer("exp", ckpt_root_dir=tmp_path, device="cpu")
    record = trainer.train(model=model or linear_model(), training_params={**QUIET, **params},
                           train_loader=loaders[0], valid_loader=loaders[1], callbacks=list(callbacks))
    return trainer, record


def csv_rows(folder):
    return list(csv.DictReader((folder / "metrics.csv").open()))


# ---------------------------------------------------------------------------------------------- EarlyStop
def test_early_stop_after_patience_when_nothing_improves(tmp_path, tiny_classification_loaders):
    stop = EarlyStop(metric="Accuracy", mode="max", patience=2)
    _, record = train(tmp_path, tiny_classification_loaders,
                      {"max_epochs": 10, "initial_lr": FROZEN_LR, "save_model": True}, [stop])
    assert record["epoch"] == 2
    assert len(csv_rows(tmp_path / "exp")) == 3
    log = (tmp_path / "exp" / "train.log").read_text()
    assert "EarlyStop: valid/Accuracy has not improved" in log
    assert "Training stopped early after epoch 3" in log
    # The counters in ckpt_latest.pth already include the epoch it ends with, so a resume continues exactly.
    saved = load_checkpoint(tmp_path / "exp" / "ckpt_latest.pth")["callbacks"]
    (state,) = [v for k, v in saved.items() if k.endswith(":EarlyStop")]
    assert state == {"best": stop.best, "best_epoch": 0, "bad_epochs": 2}


def test_early_stop_runs_every_epoch_while_improving(tmp_path, tiny_classification_loaders):
    stop = EarlyStop(metric="CrossEntropyLoss", mode="min", patience=1)
    _, record = train(tmp_path, tiny_classification_loaders, {"max_epochs": 4, "initial_lr": 0.05}, [stop])
    losses = [float(r["valid/CrossEntropyLoss"]) for r in csv_rows(tmp_path / "exp")]
    # The premise: the loss improves every epoch.
    assert all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)), losses
    assert record["epoch"] == 3 and stop.bad_epochs == 0 and stop.best_epoch == 3


def test_early_stop_min_delta_ignores_small_improvements(tmp_path, tiny_classification_loaders):
    # Same improving run, but no epoch improves the loss by 10: it stops after patience + 1 epochs.
    stop = EarlyStop(metric="CrossEntropyLoss", mode="min", patience=2, min_delta=10.0)
    _, record = train(tmp_path, tiny_classification_loaders, {"max_epochs": 6, "initial_lr": 0.05}, [stop])
    assert record["epoch"] == 2 and stop.best_epoch == 0


def feed(stop: EarlyStop, values: list[float], name: str = "Accuracy") -> list[bool]:
    """Drive the callback's events directly; returns stop_training after each epoch."""
    context = PhaseContext(metric_to_watch="Accuracy")
    stop.on_training_start(context)
    stopped = []
    for epoch, value in enumerate(values):
        context.epoch, context.metrics = epoch, {f"valid/{name}": value, "valid/CrossEntropyLoss": 1.0}
        stop.on_validation_loader_end(context)
        stop.on_epoch_end(context)
        stopped.append(context.stop_training)
    return stopped


def test_early_stop_min_delta_boundary_and_direction():
    # 1.05 is not > 1.0 + 0.1; 1.2 is; 1.25 and 1.29 are not > 1.2 + 0.1 -> stop after the 5th.
    assert feed(EarlyStop(metric="Accuracy", mode="max", patience=2, min_delta=0.1),
                [1.0, 1.05, 1.2, 1.25, 1.29]) == [False] * 4 + [True]
    # mode defaults to the direction of metric_to_watch (greater_metric_to_watch_is_better: true).
    reused = EarlyStop(patience=1)
    assert feed(reused, [0.5, 0.4]) == [False, True]
    assert feed(reused, [0.3]) == [False]  # a new run starts from scratch, not from the last run's best 0.5
    assert feed(EarlyStop(metric="Accuracy", mode="min", patience=1), [0.5, 0.4, 0.3]) == [False] * 3


def test_early_stop_check_finite():
    assert feed(EarlyStop(mode="max", patience=5), [0.5, math.nan]) == [False, True]
    assert feed(EarlyStop(mode="max", patience=5), [0.5, math.inf]) == [False, True]
    assert feed(EarlyStop(mode="max", patience=5, check_finite=False), [0.5, math.nan, 0.6]) == [False] * 3


def test_early_stop_skips_epochs_without_validation(tmp_path, tiny_classification_loaders):
    # Validation at epochs 1, 3, 5: the first sets the best, the second is the one bad validation allowed.
    stop = EarlyStop(metric="Accuracy", mode="max", patience=1)
    _, record = train(tmp_path, tiny_classification_loaders,
                      {"max_epochs": 6, "initial_lr": FROZEN_LR, "run_validation_freq": 2}, [stop])
    assert record["epoch"] == 3 and stop.best_epoch == 1


def test_early_stop_unknown_metric_names_the_closest(tmp_path, tiny_classification_loaders):
    with pytest.raises(RecipeError, match=r"'Acuracy'.*Did you mean: Accuracy"):
        train(tmp_path, tiny_classification_loaders, {"max_epochs": 2}, [EarlyStop(metric="Acuracy", mode="max")])
    with pytest.raises(RecipeError, match="mode: max or mode: min"):
        train(tmp_path, tiny_classification_loaders, {"max_epochs": 1}, [EarlyStop(metric="CrossEntropyLoss")])
    with pytest.raises(RecipeError, match="mode"):
        EarlyStop(mode="maximum")


def test_early_stop_by_name_from_phase_callbacks(tmp_path, tiny_classification_loaders):
    _, record = train(tmp_path, tiny_classification_loaders, {
        "max_epochs": 5, "initial_lr": FROZEN_LR,
        "phase_callbacks": [{"EarlyStop": {"metric": "Accuracy", "mode": "max", "patience": 1}}],
    })
    assert record["epoch"] == 1


# ---------------------------------------------------------------------------------------------- LRMonitor
def test_lr_monitor_records_the_rate_of_every_group(tmp_path, tiny_classification_loaders):
    # 6 steps per epoch; two groups (the bias gets its own rate); the step schedule divides both by 10 at epoch 1.
    monitor = LRMonitor(every_n_steps=4)
    train(tmp_path, tiny_classification_loaders,
          {"max_epochs": 2, "initial_lr": {"default": 0.1, "bias": 0.2}, "lr_mode": "step", "lr_updates": [1]},
          [monitor])
    assert [step for step, _ in monitor.history] == [4, 8, 12]
    expected = [{"default": 0.1, "bias": 0.2}, {"default": 0.01, "bias": 0.02}, {"default": 0.01, "bias": 0.02}]
    for (_, rates), want in zip(monitor.history, expected, strict=True):
        assert rates == pytest.approx(want)
    assert "step 8: lr/default=0.01  lr/bias=0.02" in (tmp_path / "exp" / "train.log").read_text()


# ---------------------------------------------------------------------------------------------- averaging
class CaptureEpochs(Callback):
    """Independent record of every epoch's weights and validation loss, taken at on_epoch_end."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []
        self.net_weights: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []

    def on_epoch_end(self, context):
        self.weights.append(copy.deepcopy(context.eval_net.state_dict()))
        self.net_weights.append(copy.deepcopy(context.net.state_dict()))
        self.losses.append(context.epoch_record["valid/CrossEntropyLoss"])


def run_with_averaging(tmp_path, loaders, **extra):
    """5 epochs ranked by validation loss (lower is better), the 3 best averaged."""
    capture = CaptureEpochs()
    params = {"max_epochs": 5, "initial_lr": 0.05, "optimizer_params": {"momentum": 0.9}, "save_model": True,
              "metric_to_watch": "CrossEntropyLoss", "greater_metric_to_watch_is_better": False, **extra}
    averaging = BestModelsAveraging(k=3, metric_to_watch="CrossEntropyLoss", greater_is_better=False)
    trainer, _ = train(tmp_path, loaders, params, [capture, averaging], model=bn_model())
    return trainer, capture, averaging, params


@pytest.fixture
def averaged_run(tmp_path, tiny_classification_loaders):
    return run_with_averaging(tmp_path, tiny_classification_loaders)


@pytest.mark.parametrize("ema", [False, True])
def test_average_model_is_the_mean_of_the_k_best_epochs(tmp_path, tiny_classification_loaders, ema):
    # With EMA the validated (and so averaged) model is the EMA model: CaptureEpochs reads context.eval_net.
    ema_params = {"ema": True, "ema_params": {"decay": 0.5, "decay_type": "constant"}} if ema else {}
    _, capture, averaging, _ = run_with_averaging(tmp_path, tiny_classification_loaders, **ema_params)
    best = sorted(range(5), key=lambda e: (capture.losses[e], e))[:3]
    assert len({round(v, 9) for v in capture.losses}) == 5  # no ties, so the ranking is unambiguous
    saved = load_checkpoint(tmp_path / "exp" / AVERAGE_MODEL)
    assert saved["epochs"] == best
    for key, value in saved["net"].items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, capture.weights[best[0]][key])
        else:
            expected = torch.stack([capture.weights[e][key] for e in best]).mean(dim=0)
            torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
    assert not torch.equal(saved["net"]["0.weight"], capture.weights[best[0]]["0.weight"])
    net_mean = torch.stack([capture.net_weights[e]["0.weight"] for e in best]).mean(dim=0)
    assert torch.allclose(saved["net"]["0.weight"], net_mean, atol=1e-6) is not ema  # EMA: not the raw net
    snapshots = load_checkpoint(tmp_path / "exp" / SNAPSHOTS)["snapshots"]
    assert [s["epoch"] for s in snapshots] == best
    assert averaging.state_dict() == {"epochs": best, "metrics": [capture.losses[e] for e in best]}


def test_average_model_metrics_match_an_independent_evaluation(averaged_run, tmp_path,
                                                               tiny_classification_loaders):
    _, _, averaging, _ = averaged_run
    saved = load_checkpoint(tmp_path / "exp" / AVERAGE_MODEL)
    model = bn_model().eval()
    model.load_state_dict(saved["net"])
    correct, losses = 0, []
    with torch.no_grad():
        for inputs, targets in tiny_classification_loaders[1]:
            preds = model(inputs)
            correct += int((preds.argmax(dim=1) == targets).sum())
            losses.append(float(torch.nn.functional.cross_entropy(preds, targets)))
    expected = {"valid/Accuracy": correct / len(tiny_classification_loaders[1].dataset),
                "valid/CrossEntropyLoss": sum(losses) / len(losses)}  # equal-sized batches: the mean of means
    assert saved["metrics"] == pytest.approx(expected, abs=1e-5)
    assert averaging.metrics == saved["metrics"]
    assert "Average of the 3 best models by CrossEntropyLoss" in (tmp_path / "exp" / "train.log").read_text()


def test_resumed_averaging_keeps_the_snapshots_of_earlier_epochs(averaged_run, tmp_path):
    _, _, first, params = averaged_run
    for start_epoch, expected in ((5, first.snapshots), (2, [s for s in first.snapshots if s.epoch < 2])):
        resumed = BestModelsAveraging(k=3, metric_to_watch="CrossEntropyLoss", greater_is_better=False)
        resumed.load_state_dict(first.state_dict())
        resumed.on_training_start(PhaseContext(epoch=start_epoch, experiment_dir=tmp_path / "exp",
                                               training_params=parse_training_params(params)))
        assert [(s.epoch, s.metric) for s in resumed.snapshots] == [(s.epoch, s.metric) for s in expected]
        for mine, theirs in zip(resumed.snapshots, expected, strict=True):
            assert all(torch.equal(mine.net[k], theirs.net[k]) for k in theirs.net)
    fresh = BestModelsAveraging(k=3, metric_to_watch="CrossEntropyLoss", greater_is_better=False)
    fresh.on_training_start(PhaseContext(epoch=0, experiment_dir=tmp_path / "exp"))
    assert fresh.snapshots == []  # a new run in the same folder does not inherit old snapshots


def test_build_model_averaging_from_training_params():
    assert build_model_averaging(parse_training_params({})) is None
    built = build_model_averaging(parse_training_params({
        "average_best_models": True, "metric_to_watch": "CrossEntropyLoss",
        "greater_metric_to_watch_is_better": False}))
    assert (built.k, built.metric_to_watch, built.greater_is_better) == (10, "CrossEntropyLoss", False)
    with pytest.raises(RecipeError, match="average_best_models_k"):
        build_model_averaging(parse_training_params({"average_best_models": True, "average_best_models_k": 0}))


def test_average_best_models_key_writes_the_average(tmp_path, tiny_classification_loaders):
    train(tmp_path, tiny_classification_loaders,
          {"max_epochs": 3, "initial_lr": 0.1, "average_best_models": True, "average_best_models_k": 2})
    saved = load_checkpoint(tmp_path / "exp" / AVERAGE_MODEL)
    assert len(saved["epochs"]) == 2 and set(saved["net"]) == {"weight", "bias"}
