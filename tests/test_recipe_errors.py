"""Every class of bad input is refused before training, in one screen, naming the key and where it came from:
wrong types and ranges, malformed recipe files, devices and folders, class counts, images, checkpoints."""

from __future__ import annotations

import textwrap

import pytest
import torch

from super_recipes import Trainer
from super_recipes.config.compose import compose_recipe
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError
from super_recipes.train_from_recipe import run_recipe
from tests.conftest import run_cli

# Keep a run that is (wrongly) not refused short: one tiny epoch.
SMALL = ["training_hyperparams.max_train_batches=1", "training_hyperparams.max_valid_batches=1", "num_workers=0",
         "device=cpu", "training_hyperparams.silent_mode=true"]


def refused(tmp_path, overrides: list[str], *expected: str, name: str = "shapes_resnet",
            config_dir=None) -> str:
    """The recipe is refused with a short message containing ``expected``, before any output is written."""
    with pytest.raises(RecipeError) as info:
        cfg, source = compose_recipe(name, [*SMALL, f"ckpt_root_dir={tmp_path / 'ckpt'}", *overrides], config_dir)
        run_recipe(cfg, source)
    message = str(info.value)
    for text in expected:
        assert text in message, message
    assert len(message.splitlines()) <= 12, message
    assert not (tmp_path / "ckpt").exists(), "refused after the run had started"
    return message


@pytest.mark.parametrize("overrides, expected", [
    (["training_hyperparams.ckpt_every_n_steps=abc"],
     ["training_hyperparams.ckpt_every_n_steps", "'abc'", "integer >= 1",
      "command-line override 'training_hyperparams.ckpt_every_n_steps=abc'"]),
    (["training_hyperparams.run_validation_freq=0"], ["run_validation_freq", "integer >= 1", "got 0"]),
    (["epochs=-1", "training_hyperparams.lr_mode=constant"], ["max_epochs", "override 'epochs=-1'", "got -1"]),
    (["lr=0.5", "lr=-1"], ["initial_lr", "override 'lr=-1'"]),  # the override Hydra applied: the last
    (["training_hyperparams.optimizer_params.momentum=abc"],
     ["momentum", "'abc'", "override 'training_hyperparams.optimizer_params.momentum=abc'"]),
    (["++training_hyperparams.optimizer_params.momentum=-1"], ["Invalid momentum value: -1", "optimizer SGD"]),
    (["++training_hyperparams.optimizer_params.betas=[0.9,0.99]"], ["betas", "SGD"]),
    (["training_hyperparams.criterion_params.label_smoothing=abc"], ["label_smoothing", "'abc'"]),
    (["training_hyperparams.ema_params.decay=2"], ["ema_params.decay", "<= 1"]),
    (["++training_hyperparams.ema_params.decya=0.9"], ["ema_params.decya", "Did you mean: decay"]),
    (["training_hyperparams.warmup_mode=LinearBatchWarmup"], ["warmup_mode", "Did you mean: LinearBatchLRWarmup"]),
    (["training_hyperparams.resume=sometimes"], ["training_hyperparams.resume", "true, false or auto"]),
    (["training_hyperparams.torch_compile=maybe"], ["torch_compile", "true or false"]),
    (["training_hyperparams.valid_metrics_list=[Accuracy,3]"], ["valid_metrics_list", "item [1]"]),
    (["training_hyperparams.clip_grad_norm=0"], ["clip_grad_norm", "> 0"]),
    (["training_hyperparams.tensorboard_port=70000"], ["tensorboard_port", "<= 65535"]),
    (["device=banana"], ["device 'banana'", "auto, cpu, cuda"]),
    (["num_gpus=0"], ["num_gpus", "got 0"]),
    (["multi_gpu=ddp"], ["multi_gpu", "Did you mean: DDP"]),
    (["experiment_name=[a,b]"], ["experiment_name", "a string"]),
    (["checkpoint_params.strict_load=maybe"], ["checkpoint_params.strict_load", "no_key_matching"]),
    (["+dataset_param=x"], ["dataset_param", "Did you mean: dataset_params"]),
])
def test_wrong_types_and_ranges_are_refused_before_anything_is_built(tmp_path, overrides, expected):
    refused(tmp_path, overrides, *expected)


def test_every_bad_key_is_reported_at_once(tmp_path):
    message = refused(tmp_path, ["training_hyperparams.max_epochs=0", "training_hyperparams.seed=-3",
                                 "++training_hyperparams.max_epoch=3"], "max_epochs", "seed", "max_epoch")
    assert len(message.splitlines()) >= 3


def test_ckpt_root_dir_that_is_a_file(tmp_path):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    with pytest.raises(RecipeError, match="is a file"):
        cfg, source = compose_recipe("shapes_resnet", [*SMALL, f"ckpt_root_dir={a_file / 'sub'}"])
        run_recipe(cfg, source)


def _recipe(folder, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(body).lstrip("\n"))


HEAD = """
defaults:
  - training_hyperparams: shapes_resnet_train_params
  - dataset_params: shapes_dataset_params
  - _self_
architecture: resnet_tiny_cifar
train_dataloader: shapes_train
experiment_name: mine
"""


@pytest.mark.parametrize("body, expected", [
    (HEAD + "arch_params: {num_classes: 6\n", ["mine.yaml, line", "column", "expected ',' or '}'"]),
    (HEAD + "arch_params:\n\tnum_classes: 6\n", ["mine.yaml, line 9, column 1", "tab", "<TAB>num_classes"]),
    (HEAD + "training_hyperparams: [1, 2]\n", ["mine.yaml:8", "'training_hyperparams' must be a mapping", "list"]),
    (HEAD + "a: ${b}\nb: ${c}\nc: ${a}\ntraining_hyperparams: {max_epochs: '${a}'}\n",
     ["Recursive interpolation", "a -> b -> c -> a"]),
    (HEAD + "dataset_params: 5\n", ["dataset_params", "mine.yaml:8", "a mapping"]),
    (HEAD + "training_hyperparams:\n  max_epochs: 2\n  lr_updatse: [1]\n", ["lr_updatse", "mine.yaml:10",
                                                                          "Did you mean: lr_updates"]),
])
def test_malformed_recipe_files_name_file_line_and_key(tmp_path, body, expected):
    _recipe(tmp_path / "recipes", "mine", body)
    refused(tmp_path, [], *expected, name="mine", config_dir=tmp_path / "recipes")


def test_a_group_file_that_is_a_list(tmp_path):
    _recipe(tmp_path / "recipes", "mine", HEAD.replace("shapes_resnet_train_params", "listed"))
    (tmp_path / "recipes" / "training_hyperparams").mkdir()
    (tmp_path / "recipes" / "training_hyperparams" / "listed.yaml").write_text("- 1\n- 2\n")
    refused(tmp_path, [], "listed.yaml:1", "must hold a mapping", name="mine", config_dir=tmp_path / "recipes")
    # A broken file the recipe does not use is not blamed for another mistake.
    _recipe(tmp_path / "recipes", "plain_defaults", "defaults: training_hyperparams\narchitecture: resnet_tiny_cifar\n")
    message = refused(tmp_path, [], "plain_defaults.yaml:1", "'defaults' must be a list", name="plain_defaults",
                      config_dir=tmp_path / "recipes")
    assert "listed.yaml" not in message


def test_command_line_errors_are_one_screen_without_traceback(tmp_path):
    _recipe(tmp_path / "recipes", "tabbed", HEAD + "arch_params:\n\tnum_classes: 6\n")
    for args, expected in [
        (["--config-dir", str(tmp_path / "recipes"), "--config-name=tabbed"], "tabbed.yaml, line 9, column 1"),
        (["training_hyperparams.ckpt_every_n_steps=abc"], "ckpt_every_n_steps"),
        (["device=banana", "--cfg", "jb"], "--cfg must be one of job, hydra, all"),
    ]:
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


def test_cfg_job_after_the_overrides(tmp_path):
    result = run_cli(["epochs=7", "lr=0.3", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 7" in result.stdout and "initial_lr: 0.3" in result.stdout
    resolved = run_cli(["--cfg=job", "--resolve", "--package", "training_hyperparams", "epochs=2"], cwd=tmp_path)
    assert resolved.returncode == 0 and resolved.stdout.startswith("max_epochs: 2"), resolved.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- data vs model
def test_fewer_model_classes_than_the_dataset_has_is_refused_before_training(tmp_path):
    with pytest.raises(RecipeError, match=r"training data has 6 classes.*predicts 4.*num_classes to 6"):
        cfg, source = compose_recipe("shapes_resnet", [*SMALL, f"ckpt_root_dir={tmp_path}",
                                                       "arch_params.num_classes=4"])
        run_recipe(cfg, source)
    assert not (tmp_path / "shapes_resnet" / "ckpt_latest.pth").exists()


def _labelled_loader(labels: list[int]) -> torch.utils.data.DataLoader:
    inputs = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, torch.tensor(labels)), batch_size=4)


def test_labels_beyond_the_model_outputs_at_the_first_batch(tmp_path):
    with pytest.raises(RecipeError, match=r"label 9, but the model predicts 5 classes.*at least 10"):
        Trainer("labels", tmp_path, device="cpu").train(
            model=torch.nn.Linear(8, 5), training_params={"silent_mode": True, "valid_metrics_list": []},
            train_loader=_labelled_loader([0, 1, 9, 2, 3, 4, 0, 1]))
    assert not (tmp_path / "labels" / "ckpt_latest.pth").exists()


def test_labels_beyond_the_model_outputs_in_a_later_batch(tmp_path):
    with pytest.raises(RecipeError, match=r"label 7, but the model predicts 5 classes"):
        Trainer("labels", tmp_path, device="cpu").train(
            model=torch.nn.Linear(8, 5), training_params={"silent_mode": True, "valid_metrics_list": []},
            train_loader=_labelled_loader([0, 1, 2, 3, 4, 0, 7, 1]))


def test_a_model_that_cannot_take_the_batch_is_explained(tmp_path):
    with pytest.raises(RecipeError, match=r"model failed on the first training batch \(inputs \(4, 8\)\)"):
        Trainer("shapes", tmp_path, device="cpu").train(
            model=torch.nn.Linear(6, 3), training_params={"silent_mode": True, "valid_metrics_list": []},
            train_loader=_labelled_loader([0, 1, 2, 0]))


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path):
    import numpy as np
    from PIL import Image

    from super_recipes.data.torchvision_datasets import ImageFolderDataset

    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    broken = tmp_path / "images" / "dog" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    dataset = ImageFolderDataset(str(tmp_path / "images"), transforms=["ToFloatTensor"])
    assert dataset[0][0].shape == (3, 8, 8)
    with pytest.raises(RecipeError, match=rf"Cannot read image {broken}"):
        dataset[3]


# ------------------------------------------------------------------------------------------------ checkpoints
def _train_once(folder, model: torch.nn.Module, **params) -> None:
    Trainer("run", folder, device="cpu").train(
        model=model, training_params={"silent_mode": True, "valid_metrics_list": [], **params},
        train_loader=_labelled_loader([0, 1, 2, 0, 1, 2, 0, 1]))


def test_resume_path_that_is_not_a_training_checkpoint(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(8, 3).state_dict(), weights)
    with pytest.raises(RecipeError, match=r"not a super_recipes training checkpoint.*checkpoint_params"):
        _train_once(tmp_path, torch.nn.Linear(8, 3), resume_path=str(weights))


def test_resume_across_another_architecture_lists_the_mismatched_keys(tmp_path):
    _train_once(tmp_path, torch.nn.Linear(8, 3))
    other = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    with pytest.raises(RecipeError) as info:
        _train_once(tmp_path, other, max_epochs=2, resume=True, resume_allow_changes=True)
    message = str(info.value)
    assert "do not fit Sequential" in message and "0.weight" in message and "weight" in message
    assert len(message.splitlines()) <= 6


class _Plain:
    pass


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("payload, named", [(_Plain(), "_Plain"), (_RunsCode(), "system"),
                                            (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear")])
def test_unsafe_checkpoints_are_refused_without_advising_weights_only_false(tmp_path, payload, named):
    path = tmp_path / "unsafe.pth"
    torch.save({"net": payload}, path)
    with pytest.raises(Exception) as raw:  # what the installed torch really says
        torch.load(path, weights_only=True)
    assert "weights_only" in str(raw.value)
    with pytest.raises(RecipeError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert named in message and "refused" in message and "Nothing in it was run" in message
    assert "weights_only" not in message and "trust" not in message
    with pytest.raises(RecipeError, match="refused"):
        _train_once(tmp_path, torch.nn.Linear(8, 3), resume_path=str(path))


def test_stale_temporary_checkpoint_files_are_removed_when_a_run_starts_or_resumes(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / ".ckpt_latest.pth.k3j2h1.tmp", folder / ".ckpt_best.pth.a1b2c3.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = folder / "notes.tmp"
    keep.write_text("mine")
    _train_once(tmp_path, torch.nn.Linear(8, 3))
    assert not any(p.exists() for p in stale) and keep.exists()
    stale[0].write_bytes(b"killed while saving")
    _train_once(tmp_path, torch.nn.Linear(8, 3), max_epochs=2, resume=True)
    assert not stale[0].exists()
    assert load_checkpoint(folder / "ckpt_latest.pth")["epoch"] == 1
