"""LR schedules through the real Trainer: the rate of every optimizer step against the published formulas.

Each test trains a tiny model for a few epochs of ``S`` = 5 optimizer steps, records the rate every parameter
group uses at every optimizer step, and compares it to 1e-9 with the formula, computed here from scratch (never
through super_recipes.schedules).
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch

from super_recipes import Trainer
from super_recipes.callbacks import Callback
from super_recipes.errors import RecipeError
from super_recipes.schedules import register_lr_function

S = 5  # optimizer steps per epoch: 20 samples in batches of 4
TOL = 1e-9


# ---------------------------------------------------------------------------------------------- harness
class LRRecorder(Callback):
    """Records each group's rate right before every optimizer step, and checks it did not change during it."""

    order = 50  # after the schedule (order 10), before the loggers

    def __init__(self, regroup: Callable[[torch.optim.Optimizer, torch.nn.Module], None] | None = None):
        self.regroup = regroup
        self.steps: list[tuple[int, int, list[float]]] = []  # (epoch, global step index, rate per group)
        self.changed_during_step: list[int] = []
        self.lr0: list[float] = []
        self.names: list[str] = []
        self.valid_values: list[float] = []

    def on_training_start(self, context) -> None:
        self.lr0 = [g["initial_lr"] for g in context.optimizer.param_groups]
        self.names = [g.get("name", str(i)) for i, g in enumerate(context.optimizer.param_groups)]

    def on_train_batch_gradient_step_start(self, context) -> None:
        self.steps.append((context.epoch, context.global_step, [g["lr"] for g in context.optimizer.param_groups]))

    def on_train_batch_gradient_step_end(self, context) -> None:
        if [g["lr"] for g in context.optimizer.param_groups] != self.steps[-1][2]:
            self.changed_during_step.append(self.steps[-1][1])

    def on_epoch_end(self, context) -> None:
        self.valid_values.append(context.epoch_record.get(f"valid/{context.metric_to_watch}", math.nan))


class Regroup(Callback):
    """Splits the optimizer's single group into named groups with their own ``initial_lr`` (runs first)."""

    order = 0

    def __init__(self, lr0: dict[str, float]):
        self.lr0 = lr0  # {"default": x, "<child module name>": y, ...}

    def on_training_start(self, context) -> None:
        optimizer, net = context.optimizer, context.net
        default = optimizer.param_groups[0]
        default["initial_lr"] = default["lr"] = self.lr0["default"]
        for name, lr0 in self.lr0.items():
            if name == "default":
                continue
            params = list(getattr(net, name).parameters())
            default["params"] = [p for p in default["params"] if all(p is not q for q in params)]
            optimizer.add_param_group({"params": params, "name": name, "lr": lr0, "initial_lr": lr0})


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(20, 4, generator=generator)
    labels = (features[:, 0] > 0).long()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, labels), batch_size=4)
    valid = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features[:8], labels[:8]), batch_size=8)
    return train, valid


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(backbone=torch.nn.Linear(4, 4), head=torch.nn.Linear(4, 2)))


def train(tmp_path, callbacks: list[Callback] = (), **params) -> LRRecorder:
    recorder = LRRecorder()
    training_params = {"max_epochs": 6, "initial_lr": 0.1, "silent_mode": True, "save_model": False,
                       "valid_metrics_list": [], "metric_to_watch": "CrossEntropyLoss",
                       "greater_metric_to_watch_is_better": False, **params}
    train_loader, valid_loader = loaders()
    Trainer("run", ckpt_root_dir=tmp_path, device="cpu").train(
        model=tiny_model(), training_params=training_params, train_loader=train_loader,
        valid_loader=valid_loader, callbacks=[*callbacks, recorder],
    )
    return recorder


def check_rates(recorder: LRRecorder, max_epochs: int, expected: Callable[[float, int, int], float],
                steps_per_epoch: int = S) -> None:
    """``expected(lr0, epoch, step)`` for every group at every optimizer step (step: 0-based, global)."""
    steps = [(g // steps_per_epoch, g) for g in range(max_epochs * steps_per_epoch)]
    assert [(e, g) for e, g, _ in recorder.steps] == steps
    assert recorder.changed_during_step == []
    for epoch, step, rates in recorder.steps:
        for lr0, rate in zip(recorder.lr0, rates, strict=True):
            want = expected(lr0, epoch, step)
            assert abs(rate - want) <= TOL, f"epoch {epoch} step {step} lr0 {lr0}: {rate} != {want}"


def refused(tmp_path, match: str, **params) -> None:
    """The run is refused with a RecipeError matching ``match`` before any optimizer step."""
    recorder = LRRecorder()
    train_loader, valid_loader = loaders()
    with pytest.raises(RecipeError, match=match):
        Trainer("bad", ckpt_root_dir=tmp_path, device="cpu").train(
            model=tiny_model(), training_params={"silent_mode": True, "save_model": False, "max_epochs": 4,
                                                 "valid_metrics_list": [], "metric_to_watch": "CrossEntropyLoss",
                                                 **params},
            train_loader=train_loader, valid_loader=valid_loader, callbacks=[recorder])
    assert recorder.steps == []


# ---------------------------------------------------------------------------------------------- formulas
def cosine(lr0: float, p: float, ratio: float = 0.01) -> float:
    final = lr0 * ratio
    return final + 0.5 * (lr0 - final) * (1 + math.cos(math.pi * p))


def epoch_warmup(lr0: float, epoch: int, warmup_epochs: int, w0: float | None = None) -> float:
    w0 = lr0 / (warmup_epochs + 1) if w0 is None else w0
    return w0 + epoch * (lr0 - w0) / warmup_epochs


def quadratic_decay(initial_lr: float, epoch: int, iter: int, max_epoch: int, iters_per_epoch: int) -> float:
    """A user schedule function, reached by dotted path and by registered name."""
    return initial_lr * (1 - (epoch * iters_per_epoch + iter) / (max_epoch * iters_per_epoch)) ** 2 + 1e-4 * iter


register_lr_function("test_quadratic_decay")(quadratic_decay)


# ---------------------------------------------------------------------------------------------- main schedules
def test_step_with_lr_updates(tmp_path):
    rec = train(tmp_path, max_epochs=7, lr_mode="step", lr_updates=[2, 5], lr_decay_factor=0.1)
    check_rates(rec, 7, lambda lr0, e, s: lr0 * 0.1 ** ((e >= 2) + (e >= 5)))


def test_step_with_update_frequency(tmp_path):
    rec = train(tmp_path, max_epochs=7, lr_mode="step", step_lr_update_freq=3, lr_decay_factor=0.5)
    check_rates(rec, 7, lambda lr0, e, s: lr0 * 0.5 ** (e // 3))


def test_step_refuses_both_milestone_keys(tmp_path):
    refused(tmp_path, "lr_updates or step_lr_update_freq", lr_mode="step", lr_updates=[2], step_lr_update_freq=2)


def test_cosine(tmp_path):
    rec = train(tmp_path, lr_mode="cosine", cosine_final_lr_ratio=0.05)
    check_rates(rec, 6, lambda lr0, e, s: cosine(lr0, s / (6 * S), 0.05))


def test_poly(tmp_path):
    rec = train(tmp_path, lr_mode="poly", poly_lr_power=0.9)
    check_rates(rec, 6, lambda lr0, e, s: lr0 * (1 - s / (6 * S)) ** 0.9)


def test_exp_counts_from_the_end_of_warmup(tmp_path):
    rec = train(tmp_path, lr_mode="exp", lr_decay_factor=0.5, lr_warmup_epochs=1)
    check_rates(rec, 6, lambda lr0, e, s: lr0 / 2 if e < 1 else lr0 * 0.5 ** ((s - S) / S))


def test_function_by_registered_name(tmp_path):
    rec = train(tmp_path, lr_mode="function", lr_schedule_function="test_quadratic_decay")
    check_rates(rec, 6, lambda lr0, e, s: quadratic_decay(lr0, e, s - e * S, 6, S))


def test_function_by_dotted_path_with_warmup_and_cooldown(tmp_path):
    rec = train(tmp_path, max_epochs=7, lr_mode="function", lr_schedule_function=f"{__name__}.quadratic_decay",
                lr_warmup_epochs=2, lr_cooldown_epochs=1)

    def expected(lr0, e, s):
        if e < 2:
            return epoch_warmup(lr0, e, 2)
        if e >= 6:  # frozen at the last step of epoch 5
            return quadratic_decay(lr0, 5, S - 1, 7, S)
        return quadratic_decay(lr0, e, s - e * S, 7, S)

    check_rates(rec, 7, expected)


def test_function_names_are_checked_before_training(tmp_path):
    refused(tmp_path, "Did you mean: test_quadratic_decay", lr_mode="function",
            lr_schedule_function="test_quadratic_decy")
    refused(tmp_path, "Did you mean: quadratic_decay", lr_mode="function",
            lr_schedule_function=f"{__name__}.quadratic_decy")
    refused(tmp_path, "Cannot import 'no_such_pkg.schedule'.*No module named 'no_such_pkg'", lr_mode="function",
            lr_schedule_function="no_such_pkg.schedule")
    refused(tmp_path, "needs training_hyperparams.lr_schedule_function", lr_mode="function")
    refused(tmp_path, "only read by lr_mode: function", lr_mode="cosine", lr_schedule_function="linear_decay")


# ---------------------------------------------------------------------------------------------- torch schedulers
def test_torch_scheduler_per_epoch(tmp_path):
    rec = train(tmp_path, lr_mode={"StepLR": {"step_size": 2, "gamma": 0.5, "phase": "epoch"}})
    check_rates(rec, 6, lambda lr0, e, s: lr0 * 0.5 ** (e // 2))


def test_torch_scheduler_per_step(tmp_path):
    total = 6 * S
    rec = train(tmp_path, lr_mode={"CosineAnnealingLR": {"T_max": total, "eta_min": 0.001, "phase": "step"}})
    check_rates(rec, 6, lambda lr0, e, s: 0.001 + 0.5 * (lr0 - 0.001) * (1 + math.cos(math.pi * s / total)))


def test_reduce_on_plateau_steps_only_on_validated_epochs(tmp_path):
    # The validation loss falls, but "greater is better" makes every validated epoch after the first a plateau.
    rec = train(tmp_path, max_epochs=7, run_validation_freq=2, greater_metric_to_watch_is_better=True,
                lr_mode={"ReduceLROnPlateau": {"factor": 0.5, "patience": 0, "threshold": 0.0}})
    validated = [not math.isnan(v) for v in rec.valid_values]
    assert validated == [False, True, False, True, False, True, True]
    epoch_rates, lr, best = [], rec.lr0[0], -math.inf
    for value, was_validated in zip(rec.valid_values, validated, strict=True):
        epoch_rates.append(lr)
        if was_validated:
            if value > best:
                best = value
            else:
                lr *= 0.5
    assert epoch_rates[-1] < epoch_rates[0]  # the plateau did trigger
    check_rates(rec, 7, lambda lr0, e, s: epoch_rates[e])


def test_torch_scheduler_mistakes_are_refused(tmp_path):
    refused(tmp_path, "Did you mean: StepLR", lr_mode={"StepLRR": {"step_size": 2}})
    refused(tmp_path, "Did you mean: step_size", lr_mode={"StepLR": {"step_sise": 2}})
    refused(tmp_path, "phase must be one of", lr_mode={"StepLR": {"step_size": 2, "phase": "batch"}})
    refused(tmp_path, "phase must be epoch", lr_mode={"ReduceLROnPlateau": {"phase": "step"}})
    refused(tmp_path, "lr_warmup_epochs cannot be combined", lr_mode={"StepLR": {"step_size": 2}},
            lr_warmup_epochs=1)
    refused(tmp_path, "lr_cooldown_epochs cannot be combined", lr_mode={"StepLR": {"step_size": 2}},
            lr_cooldown_epochs=1)
    refused(tmp_path, "Unknown lr_mode 'cosin'.*Did you mean: cosine", lr_mode="cosin")


def test_torch_scheduler_state_round_trips(tmp_path):
    from types import SimpleNamespace

    from super_recipes.config.training_params import parse_training_params
    from super_recipes.schedules import build_lr_schedule

    params = parse_training_params({"lr_mode": {"StepLR": {"step_size": 2, "gamma": 0.5}}})

    def fresh_context():
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        optimizer.param_groups[0]["initial_lr"] = 0.1
        return SimpleNamespace(optimizer=optimizer, epoch=0, global_step=0)

    first, context = build_lr_schedule(params), fresh_context()
    first.on_training_start(context)
    for epoch in range(4):  # epochs 0..3 ran; the checkpoint is written before epoch 3's scheduler step
        context.epoch = epoch
        first.on_train_loader_start(context)
        context.optimizer.step()
    saved = first.state_dict()
    assert saved["scheduler"]["last_epoch"] == 3

    resumed, context = build_lr_schedule(params), fresh_context()
    resumed.load_state_dict(saved)  # before the optimizer exists: kept until on_training_start
    assert resumed.state_dict() == saved
    resumed.on_training_start(context)
    assert context.optimizer.param_groups[0]["lr"] == 0.1 * 0.5  # epoch 3's rate, not the scheduler's start
    context.epoch = 4
    resumed.on_train_loader_start(context)
    assert abs(context.optimizer.param_groups[0]["lr"] - 0.1 * 0.5 ** 2) <= TOL


# ---------------------------------------------------------------------------------------------- warmup, cooldown
def test_epoch_warmup_matches_the_documented_example(tmp_path):
    rec = train(tmp_path, max_epochs=5, initial_lr=1.0, lr_warmup_epochs=3)
    assert [rates[0] for e, s, rates in rec.steps[::S]] == [0.25, 0.5, 0.75, 1.0, 1.0]
    check_rates(rec, 5, lambda lr0, e, s: (0.25, 0.5, 0.75, 1.0, 1.0)[e])


def test_batch_warmup_spans_epochs_then_poly_then_cooldown(tmp_path):
    n, epochs, cool = 12, 6, 1  # warmup covers epochs 0, 1 and the first 2 steps of epoch 2
    rec = train(tmp_path, max_epochs=epochs, lr_mode="poly", warmup_mode="LinearBatchLRWarmup",
                lr_warmup_steps=n, lr_cooldown_epochs=cool)
    total_main = (epochs - cool) * S - n

    def expected(lr0, e, s):
        if e >= epochs - cool:
            s = (epochs - cool) * S - 1
        if s < n:
            return lr0 / n + s * (lr0 - lr0 / n) / (n - 1)  # w0 defaults to lr0 / N
        return lr0 * (1 - (s - n) / total_main) ** 0.9

    check_rates(rec, epochs, expected)
    assert abs(rec.steps[n - 1][2][0] - 0.1) <= TOL and abs(rec.steps[0][2][0] - 0.1 / n) <= TOL


def test_batch_warmup_with_explicit_start_and_step_schedule(tmp_path):
    rec = train(tmp_path, lr_mode="step", lr_updates=[3], warmup_mode="LinearBatchLRWarmup", lr_warmup_steps=7,
                warmup_initial_lr=0.01)
    check_rates(rec, 6, lambda lr0, e, s: 0.01 + s * (lr0 - 0.01) / 6 if s < 7 else lr0 * 0.1 ** (e >= 3))


def test_cooldown_keeps_the_last_rate(tmp_path):
    rec = train(tmp_path, max_epochs=7, lr_mode="cosine", lr_cooldown_epochs=2)
    check_rates(rec, 7, lambda lr0, e, s: cosine(lr0, min(s, 5 * S - 1) / (5 * S)))


def test_warmup_cosine_and_cooldown_together(tmp_path):
    epochs, warm, cool = 8, 2, 2
    rec = train(tmp_path, max_epochs=epochs, lr_mode="cosine", lr_warmup_epochs=warm, lr_cooldown_epochs=cool)
    total_main = (epochs - cool) * S - warm * S

    def expected(lr0, e, s):
        if e < warm:
            return epoch_warmup(lr0, e, warm)
        s = min(s, (epochs - cool) * S - 1)
        return cosine(lr0, (s - warm * S) / total_main)

    check_rates(rec, epochs, expected)


def test_warmup_and_cooldown_mistakes_are_refused(tmp_path):
    refused(tmp_path, "Did you mean: LinearBatchLRWarmup", warmup_mode="LinearBatchWarmup", lr_warmup_steps=3)
    refused(tmp_path, "read by warmup_mode: LinearBatchLRWarmup", lr_mode="cosine", lr_warmup_steps=3)
    refused(tmp_path, "give the warmup length in lr_warmup_steps", lr_mode="cosine",
            warmup_mode="LinearBatchLRWarmup", lr_warmup_epochs=1)
    refused(tmp_path, "lr_warmup_steps \\(30\\) is longer", lr_mode="cosine", warmup_mode="LinearBatchLRWarmup",
            lr_warmup_steps=30, lr_cooldown_epochs=1)
    refused(tmp_path, "must be between 0 and max_epochs", lr_mode="cosine", lr_warmup_epochs=3,
            lr_cooldown_epochs=2)


# ---------------------------------------------------------------------------------------------- groups and logs
@pytest.mark.parametrize("mode", ["cosine", "torch"])
def test_each_group_follows_its_own_initial_lr(tmp_path, mode):
    groups = Regroup({"default": 0.1, "backbone": 0.01, "head": 0.0})  # a group at lr0 = 0 stays at 0
    if mode == "cosine":
        rec = train(tmp_path, [groups], lr_mode="cosine", lr_warmup_epochs=1, warmup_initial_lr=0.02,
                    lr_cooldown_epochs=1)

        def expected(lr0, e, s):  # warmup_initial_lr is the default group's; others start at the same fraction
            return 0.2 * lr0 if e < 1 else cosine(lr0, (min(s, 5 * S - 1) - S) / (4 * S))
    else:
        rec = train(tmp_path, [groups], lr_mode={"StepLR": {"step_size": 2, "gamma": 0.5}})

        def expected(lr0, e, s):
            return lr0 * 0.5 ** (e // 2)

    assert rec.names == ["default", "backbone", "head"] and rec.lr0 == [0.1, 0.01, 0.0]
    check_rates(rec, 6, expected)
    assert all(rates[2] == 0.0 for _, _, rates in rec.steps)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    for row in rows:
        first = rec.steps[int(row["epoch"]) * S][2]
        assert [float(row[f"lr/{name}"]) for name in rec.names] == first


def test_groups_from_an_initial_lr_mapping(tmp_path):
    rec = train(tmp_path, lr_mode="cosine", initial_lr={"default": 0.1, "backbone": 0.01})
    assert sorted(zip(rec.names, rec.lr0, strict=True)) == [("backbone", 0.01), ("default", 0.1)]
    check_rates(rec, 6, lambda lr0, e, s: cosine(lr0, s / (6 * S)))


def test_schedules_count_optimizer_steps_not_micro_batches(tmp_path):
    steps = 3  # 5 micro-batches per epoch, an optimizer step every 2: steps after batches 1, 3 and 4
    rec = train(tmp_path, max_epochs=5, lr_mode="cosine", batch_accumulate=2, lr_warmup_epochs=1)
    check_rates(rec, 5, lambda lr0, e, s: lr0 / 2 if e < 1 else cosine(lr0, (s - steps) / (4 * steps)),
                steps_per_epoch=steps)


def test_csv_has_each_epochs_first_rate_and_tensorboard_every_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = 4
    rec = train(tmp_path, max_epochs=epochs, lr_mode="cosine", lr_warmup_epochs=1, log_every_n_steps=1)
    check_rates(rec, epochs, lambda lr0, e, s: lr0 / 2 if e < 1 else cosine(lr0, (s - S) / ((epochs - 1) * S)))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [float(r["lr"]) for r in rows] == [rec.steps[e * S][2][0] for e in range(epochs)]

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("train_step/lr")
    # TensorBoard counts steps after they are taken (1-based) and stores float32.
    assert [e.step for e in logged] == list(range(1, epochs * S + 1))
    for event, (_, _, rates) in zip(logged, rec.steps, strict=True):
        assert event.value == pytest.approx(rates[0], rel=1e-6)
