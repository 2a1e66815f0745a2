"""EMA, mixed precision, accumulation, clipping, parameter groups, weight decay, compile, epoch checkpoints.

Expected values are computed here by hand from the definitions in the README, not read back from the code.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from super_recipes import Trainer
from super_recipes.callbacks import Callback
from super_recipes.engine.checkpoints import load_checkpoint


def regression_data(n: int = 40, seed: int = 0) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x @ torch.randn(6, 3, generator=generator)).argmax(dim=1)
    return torch.utils.data.TensorDataset(x, y)


def loader(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train(tmp_path, model, train_loader, valid_loader=None, callbacks=(), **params):
    base = {"max_epochs": 1, "initial_lr": 0.1, "silent_mode": True, "save_model": False, "seed": 0}
    trainer = Trainer("run", tmp_path, device="cpu")
    record = trainer.train(model=model, training_params={**base, **params}, train_loader=train_loader,
                           valid_loader=valid_loader, callbacks=list(callbacks))
    return trainer, record


class StepRecorder(Callback):
    """Weights after every optimizer step, and the EMA weights."""

    order = 300

    def __init__(self):
        self.weights, self.ema_weights, self.steps = [], [], 0

    def on_train_batch_gradient_step_end(self, context):
        self.steps += 1
        self.weights.append(copy.deepcopy(context.net.state_dict()))
        if context.ema is not None:
            self.ema_weights.append(copy.deepcopy(context.ema.module.state_dict()))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=atol), name


@pytest.mark.parametrize("optimizer_params", [{}, {"momentum": 0.9, "weight_decay": 1e-3}])
def test_accumulation_equals_one_larger_batch(tmp_path, optimizer_params):
    data = regression_data(40)  # 5 micro-batches of 8 with k=2: groups of 16, 16 and a trailing 8
    accumulated, plain = mlp(), mlp()
    recorder = StepRecorder()
    train(tmp_path / "a", accumulated, loader(data, 8), batch_accumulate=2, max_epochs=2,
          optimizer_params=optimizer_params, callbacks=[recorder])
    train(tmp_path / "b", plain, loader(data, 16), max_epochs=2, optimizer_params=optimizer_params)
    assert recorder.steps == 6
    assert_same_weights(accumulated, plain)


def test_clip_grad_norm_limits_the_step(tmp_path):
    data = regression_data(8)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    train(tmp_path, model, loader(data, 8), initial_lr=1.0, clip_grad_norm=1e-3)
    change = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert change.item() == pytest.approx(1e-3, rel=1e-4)  # SGD, lr 1: the step is the clipped gradient


def test_zero_weight_decay_on_bias_and_bn(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))

    class ZeroLoss(torch.nn.Module):  # no gradient from the data: only weight decay moves the weights
        def forward(self, preds, targets):
            return preds.sum() * 0.0

    from super_recipes.registry import LOSSES
    LOSSES.register("ZeroTestLoss")(ZeroLoss)
    before = copy.deepcopy(model.state_dict())
    trainer, _ = train(tmp_path, model, loader(regression_data(8), 8), loss="ZeroTestLoss", initial_lr=0.5,
                       optimizer_params={"weight_decay": 0.1}, zero_weight_decay_on_bias_and_bn=True)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"default", "default/no_decay"} and groups["default/no_decay"]["weight_decay"] == 0.0
    after = model.state_dict()
    for name in ("0.weight", "2.weight"):
        assert torch.allclose(after[name], before[name] * (1 - 0.5 * 0.1))  # decayed
    for name in ("0.bias", "1.weight", "1.bias", "2.bias"):
        assert torch.equal(after[name], before[name])  # exempt


def test_prefix_learning_rates_and_freezing_by_zero(tmp_path):
    model = mlp()
    first_layer = copy.deepcopy(model[0].state_dict())
    trainer, _ = train(tmp_path, model, loader(regression_data(16), 8), initial_lr={"default": 0.1, "0": 0.0})
    assert {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups} == {"default": 0.1}
    assert not model[0].weight.requires_grad
    assert torch.equal(model[0].weight, first_layer["weight"]) and torch.equal(model[0].bias, first_layer["bias"])

    model = mlp()
    trainer, record = train(tmp_path, model, loader(regression_data(16), 8), initial_lr={"default": 0.1, "2": 0.01})
    assert {g["name"]: g["lr"] for g in trainer.optimizer.param_groups} == {"default": 0.1, "2": 0.01}
    assert record["lr/default"] == 0.1 and record["lr/2"] == 0.01


def test_bad_prefix_is_refused(tmp_path):
    from super_recipes.errors import RecipeError

    with pytest.raises(RecipeError, match="match no parameter"):
        train(tmp_path, mlp(), loader(regression_data(8), 8), initial_lr={"default": 0.1, "backbone": 0.0})
    with pytest.raises(RecipeError, match="needs a 'default'"):
        train(tmp_path, mlp(), loader(regression_data(8), 8), initial_lr={"0": 0.1})


@pytest.mark.parametrize("decay_type", ["constant", "threshold", "exp"])
def test_ema_matches_hand_computation(tmp_path, decay_type):
    data = regression_data(32)
    model = mlp()
    initial = copy.deepcopy(model.state_dict())
    recorder = StepRecorder()
    trainer, _ = train(tmp_path, model, loader(data, 8), max_epochs=2, ema=True, callbacks=[recorder],
                       ema_params={"decay": 0.9, "decay_type": decay_type, "beta": 15})
    total = 8  # optimizer steps in the run
    expected = {k: v.clone() for k, v in initial.items()}
    for t, weights in enumerate(recorder.weights):
        decay = {"constant": 0.9, "threshold": min(0.9, (1 + t) / (10 + t)),
                 "exp": 0.9 * (1 - math.exp(-15 * t / total))}[decay_type]
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
        for k, v in recorder.ema_weights[t].items():
            assert torch.allclose(v, expected[k], atol=1e-6), (t, k)
    assert trainer.ema.updates == total


def test_ema_model_is_validated_and_saved(tmp_path):
    data = regression_data(32)
    trainer, record = train(tmp_path, mlp(), loader(data, 8), loader(data, 16), max_epochs=2, ema=True,
                            save_model=True, ema_params={"decay": 0.5, "decay_type": "constant"})
    state = load_checkpoint(tmp_path / "run" / "ckpt_latest.pth")
    assert state["ema_updates"] == 8 and set(state["ema_net"]) == set(state["net"])
    ema_model = mlp()
    ema_model.load_state_dict(state["ema_net"])
    with torch.no_grad():
        x, y = data.tensors
        accuracy = (ema_model(x).argmax(1) == y).float().mean().item()
    assert record["valid/Accuracy"] == pytest.approx(accuracy)
    assert state["acc"] == pytest.approx(max(accuracy, state["acc"]))


def test_ema_updates_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    trainer, _ = train(tmp_path, model, loader(regression_data(32), 8), ema=True,
                       ema_params={"decay": 0.5, "decay_type": "constant"})
    ema_bn = trainer.ema.module[1]
    assert not torch.equal(ema_bn.running_mean, torch.zeros(8))  # averaged from the model's statistics
    assert ema_bn.num_batches_tracked == model[1].num_batches_tracked  # integer buffers are copied


def test_bf16_autocast_on_cpu_in_training_and_validation(tmp_path):
    dtypes = {}

    class DtypeSpy(Callback):
        def on_train_batch_loss_end(self, context):
            dtypes["train"] = context.preds.dtype

        def on_validation_batch_end(self, context):
            dtypes["valid"] = context.preds.dtype

    data = regression_data(16)
    model = mlp()
    _, record = train(tmp_path, model, loader(data, 8), loader(data, 8), mixed_precision=True,
                      amp_dtype="bfloat16", callbacks=[DtypeSpy()])
    assert dtypes == {"train": torch.bfloat16, "valid": torch.bfloat16}
    assert model[0].weight.dtype == torch.float32 and math.isfinite(record["train/CrossEntropyLoss"])


def test_fp16_on_cpu_warns_and_uses_bf16(tmp_path, caplog):
    seen = {}

    class DtypeSpy(Callback):
        def on_train_batch_loss_end(self, context):
            seen["dtype"] = context.preds.dtype

    logging.getLogger("super_recipes").propagate = True
    with caplog.at_level(logging.WARNING, logger="super_recipes"):
        train(tmp_path, mlp(), loader(regression_data(8), 8), mixed_precision=True, amp_dtype="float16",
              callbacks=[DtypeSpy()])
    assert seen["dtype"] == torch.bfloat16
    assert any("float16 autocast is not available on CPU" in r.message for r in caplog.records)


def test_epoch_checkpoint_list(tmp_path):
    train(tmp_path, mlp(), loader(regression_data(8), 8), max_epochs=3, save_model=True,
          save_ckpt_epoch_list=[0, 2])
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt_epoch_*.pth")) == [
        "ckpt_epoch_0.pth", "ckpt_epoch_2.pth"]
    assert load_checkpoint(tmp_path / "run" / "ckpt_epoch_0.pth")["epoch"] == 0


def test_torch_compile_trains_like_eager(tmp_path):
    data = regression_data(16)
    compiled, eager = mlp(), mlp()
    trainer, _ = train(tmp_path / "c", compiled, loader(data, 8), torch_compile=True, max_epochs=2,
                       torch_compile_options={"dynamic": False})
    train(tmp_path / "e", eager, loader(data, 8), max_epochs=2)
    assert trainer.forward_net is not compiled  # the compiled wrapper ran the steps
    assert_same_weights(compiled, eager, atol=1e-5)
