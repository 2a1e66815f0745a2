"""PPYoloETrainingStageSwitchCallback: the static (ATSS) assigner until its epoch, the task-aligned one after, also in
a run resumed past the switch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from super_recipes import Trainer, dataloaders
from super_recipes.callbacks import Callback, PhaseContext
from super_recipes.detection.ppyoloe.loss import PPYoloELoss
from super_recipes.detection.ppyoloe.stage_switch import PPYoloETrainingStageSwitchCallback
from super_recipes.errors import RecipeError
from super_recipes.registry import CALLBACKS
from tests.test_ppyoloe_loss import ToyHead


def context(epoch: int, loss_fn=None) -> PhaseContext:
    trainer = SimpleNamespace(loss_fn=loss_fn if loss_fn is not None else PPYoloELoss(num_classes=4))
    return PhaseContext(trainer=trainer, epoch=epoch, max_epochs=10)


def test_stage_switch_flips_the_assigner_at_its_epoch_and_on_resume():
    assert "PPYoloETrainingStageSwitchCallback" in CALLBACKS.names()
    callback = PPYoloETrainingStageSwitchCallback(static_assigner_end_epoch=3)
    ctx = context(epoch=0)
    callback.on_training_start(ctx)
    for epoch in range(3):
        ctx.epoch = epoch
        callback.on_train_loader_start(ctx)
        assert ctx.trainer.loss_fn.use_static_assigner
    ctx.epoch = 3
    callback.on_train_loader_start(ctx)
    assert not ctx.trainer.loss_fn.use_static_assigner
    resumed = context(epoch=5)  # a run resumed past the switch builds a fresh loss with the static assigner
    PPYoloETrainingStageSwitchCallback(static_assigner_end_epoch=3).on_training_start(resumed)
    assert not resumed.trainer.loss_fn.use_static_assigner
    with pytest.raises(RecipeError, match="use_static_assigner"):
        callback.on_training_start(context(epoch=0, loss_fn=torch.nn.MSELoss()))
    with pytest.raises(RecipeError, match=">= 0"):
        PPYoloETrainingStageSwitchCallback(static_assigner_end_epoch=-1)


class AssignerRecorder(Callback):
    def __init__(self):
        self.seen: list[tuple[int, bool]] = []

    def on_train_batch_start(self, context: PhaseContext) -> None:
        self.seen.append((context.epoch, context.trainer.loss_fn.use_static_assigner))


def test_stage_switch_in_a_real_run_and_its_resume(tmp_path):
    loader = dataloaders.get("shapes_detection_train",
                             dataset_params={"data_dir": str(tmp_path / "shapes"), "num_images": 4,
                                             "input_dim": [64, 64], "image_size": 64},
                             dataloader_params={"batch_size": 2})
    params = {"max_epochs": 2, "loss": "PPYoloELoss", "criterion_params": {"num_classes": 4},
              "initial_lr": 0.01, "silent_mode": True,
              "phase_callbacks": [{"PPYoloETrainingStageSwitchCallback": {"static_assigner_end_epoch": 1}}]}
    recorder = AssignerRecorder()
    Trainer("switch", tmp_path, device="cpu").train(model=ToyHead(), train_loader=loader, callbacks=[recorder],
                                                    training_params=params)
    assert recorder.seen == [(0, True), (0, True), (1, False), (1, False)]
    # Resume the finished run for one more epoch: the fresh loss starts static and is switched before training.
    resumed = AssignerRecorder()
    Trainer("switch", tmp_path, device="cpu").train(
        model=ToyHead(), train_loader=loader, callbacks=[resumed],
        training_params={**params, "max_epochs": 3, "resume": True})
    assert resumed.seen == [(2, False), (2, False)]
