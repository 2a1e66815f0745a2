"""The command line as a user runs it (subprocesses): a real run, Hydra's flags, and every refused mistake."""

from __future__ import annotations

import csv
import textwrap

import pytest

from tests.conftest import run_cli, write_cifar10

FAST = ["epochs=1", "training_hyperparams.max_train_batches=3", "training_hyperparams.max_valid_batches=2",
        "num_workers=0", "device=cpu"]


def test_default_recipe_runs_and_writes_every_output(tmp_path):
    result = run_cli([*FAST, f"ckpt_root_dir={tmp_path / 'ckpt'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "ckpt" / "shapes_resnet"
    for name in ("recipe.yaml", "ckpt_latest.pth", "ckpt_best.pth", "metrics.csv", "train.log"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert len(rows) == 1 and {"epoch", "lr", "valid/Accuracy", "epoch_time"} <= set(rows[0])
    assert "Epoch 1/1" in result.stderr and "Epoch 1/1" in (folder / "train.log").read_text()
    # Hydra leaves nothing behind: no outputs/ folder, no .hydra copies, no stray log files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert "max_epochs: 1" in (folder / "recipe.yaml").read_text()


def test_hydra_cfg_and_info_flags(tmp_path):
    result = run_cli(["--config-name=cifar10_resnet", "--cfg", "job", "epochs=5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 5" in result.stdout and "architecture: resnet18_cifar" in result.stdout
    info = run_cli(["--info"], cwd=tmp_path)
    assert info.returncode == 0 and "shapes_resnet" in info.stdout
    assert list(tmp_path.iterdir()) == []


def test_user_recipe_folder_with_imports_and_own_dataset(tmp_path):
    (tmp_path / "my_shapes.py").write_text(textwrap.dedent("""
        import torch
        from super_recipes.registry import register_dataset

        @register_dataset
        class ConstantDataset(torch.utils.data.Dataset):
            def __init__(self, size: int = 16, num_classes: int = 6):
                self.size, self.num_classes = size, num_classes
            def __len__(self):
                return self.size
            def __getitem__(self, i):
                return torch.full((3, 32, 32), float(i % self.num_classes)), i % self.num_classes
    """))
    recipes = tmp_path / "my_recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text(textwrap.dedent("""
        defaults:
          - training_hyperparams: default_train_params
          - arch_params: resnet_cifar_arch_params
          - checkpoint_params: default_checkpoint_params
          - _self_
        imports: [my_shapes]
        architecture: resnet_tiny_cifar
        arch_params: {num_classes: 6}
        dataset_params:
          train_dataset_params: {dataset: ConstantDataset, size: 8}
          train_dataloader_params: {batch_size: 4, shuffle: true}
          val_dataset_params: {dataset: ConstantDataset, size: 4}
          val_dataloader_params: {batch_size: 4}
        experiment_name: mine
        training_hyperparams: {silent_mode: true}
    """))
    fast = [arg for arg in FAST if not arg.startswith("num_workers")]
    result = run_cli(["--config-dir", str(recipes), "--config-name=mine", *fast,
                      f"ckpt_root_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "mine" / "ckpt_latest.pth").is_file()


def _refused(args: list[str], cwd, *expected: str) -> str:
    result = run_cli(args, cwd=cwd)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) < 25, result.stderr
    return result.stderr


def test_unknown_recipe(tmp_path):
    _refused(["--config-name=cifar10_resnt"], tmp_path, "Unknown recipe 'cifar10_resnt'", "cifar10_resnet")


def test_unknown_group_option(tmp_path):
    _refused(["dataset_params=shapes_datset_params"], tmp_path, "shapes_datset_params", "shapes_dataset_params")


def test_unknown_training_key_in_override(tmp_path):
    _refused(["training_hyperparams.max_epoch=3"], tmp_path, "max_epoch", "Did you mean: max_epochs")
    _refused(["+training_hyperparams.max_epoch=3"], tmp_path, "max_epoch", "Did you mean: max_epochs")


def test_unknown_training_key_in_recipe_file_names_the_file(tmp_path):
    (tmp_path / "typo.yaml").write_text(textwrap.dedent("""
        defaults:
          - /shapes_resnet
          - _self_
        training_hyperparams:
          max_epoch: 3
    """))
    _refused(["--config-dir", str(tmp_path), "--config-name=typo"], tmp_path,
             "training_hyperparams.max_epoch", "typo.yaml", "max_epochs")


@pytest.mark.parametrize("override, expected", [
    ("architecture=resnet18_cifarr", ["Unknown model 'resnet18_cifarr'", "resnet18_cifar"]),
    ("training_hyperparams.loss=CrossEntropyLos", ["Unknown loss", "CrossEntropyLoss"]),
    ("training_hyperparams.valid_metrics_list=[Acuracy]", ["Unknown metric 'Acuracy'", "Accuracy"]),
    ("training_hyperparams.optimizer=Adamw", ["Unknown optimizer 'Adamw'", "AdamW"]),
    ("training_hyperparams.phase_callbacks=[NoSuchCallback]", ["Unknown callback 'NoSuchCallback'"]),
    ("train_dataloader=shapes_trian", ["Unknown dataloader 'shapes_trian'", "shapes_train"]),
    ("training_hyperparams.max_epochs=many", ["training_hyperparams.max_epochs", "many"]),
    ("imports=[no_such_module_xyz]", ["imports[0]", "no_such_module_xyz"]),
])
def test_bad_names_and_values_are_refused(tmp_path, override, expected):
    _refused([override], tmp_path, *expected)


def test_missing_dataset_folder(tmp_path):
    _refused(["--config-name=cifar10_resnet", "dataset_params.train_dataset_params.root=/nonexistent/cifar"],
             tmp_path, "/nonexistent/cifar")


def test_cifar10_recipe_on_real_format_files(tmp_path):
    root = write_cifar10(tmp_path / "data")
    result = run_cli(["--config-name=cifar10_resnet", *FAST, "batch_size=8", "val_batch_size=8",
                      f"dataset_params.train_dataset_params.root={root}",
                      f"dataset_params.val_dataset_params.root={root}", f"ckpt_root_dir={tmp_path / 'ckpt'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ckpt" / "cifar10_resnet" / "ckpt_latest.pth").is_file()
