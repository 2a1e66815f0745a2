"""The shipped recipe tree: composition with Hydra, shortcuts, key origins, and one real step of every recipe."""

from __future__ import annotations

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from super_recipes.config.compose import available_recipes, compose_recipe, expand_shortcuts
from super_recipes.config.training_params import TrainingParams
from super_recipes.errors import RecipeError
from super_recipes.paths import recipes_dir
from super_recipes.train_from_recipe import run_recipe

SHIPPED = sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def test_shipped_recipes_are_found():
    assert {"shapes_resnet", "cifar10_resnet"} <= set(SHIPPED)
    assert set(SHIPPED) <= set(available_recipes())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_composes_with_all_groups(name):
    cfg, source = compose_recipe(name)
    for group in ("training_hyperparams", "dataset_params", "arch_params", "checkpoint_params"):
        assert group in cfg and group in source.choices
    assert cfg.architecture and cfg.train_dataloader and cfg.experiment_name
    TrainingParams(**OmegaConf.to_container(cfg.training_hyperparams))  # every key is known


def test_default_train_params_and_readme_table_are_generated_from_the_schema():
    from super_recipes.config import training_params as schema

    listed = OmegaConf.to_container(OmegaConf.load(recipes_dir() / "training_hyperparams" /
                                                   "default_train_params.yaml"))
    assert list(listed) == [f.name for f in fields(TrainingParams)]
    assert TrainingParams(**listed).to_dict() == TrainingParams().to_dict()
    assert (recipes_dir() / schema.DEFAULT_YAML).read_text() == schema.render_default_yaml()
    readme = (recipes_dir().parent / "README.md").read_text()
    assert schema.render_markdown_table() in readme


def test_shortcuts_and_hydra_overrides():
    assert expand_shortcuts(["epochs=3", "num_workers=0", "x=1"]) == [
        "training_hyperparams.max_epochs=3", "dataset_params.train_dataloader_params.num_workers=0",
        "dataset_params.val_dataloader_params.num_workers=0", "x=1"]
    cfg, _ = compose_recipe("cifar10_resnet", ["epochs=7", "lr=0.3", "batch_size=32", "val_batch_size=64",
                                               "architecture=resnet34_cifar", "experiment_name=foo",
                                               "dataset_params=shapes_dataset_params"])
    assert cfg.training_hyperparams.max_epochs == 7 and cfg.training_hyperparams.initial_lr == 0.3
    assert cfg.dataset_params.train_dataloader_params.batch_size == 32
    assert cfg.dataset_params.val_dataloader_params.batch_size == 64
    assert cfg.architecture == "resnet34_cifar" and cfg.experiment_name == "foo"


def test_cifar10_recipe_carries_the_published_setup():
    cfg, _ = compose_recipe("cifar10_resnet")
    hp = cfg.training_hyperparams
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, list(hp.lr_updates), hp.lr_decay_factor) == (
        250, 0.1, "SGD", "step", [100, 150, 200], 0.1)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 1e-4}
    assert cfg.dataset_params.train_dataloader_params.batch_size == 256
    assert cfg.architecture == "resnet18_cifar"
    assert "94.9" in (recipes_dir() / "cifar10_resnet.yaml").read_text()


def test_origin_names_the_file_line_or_override():
    from super_recipes.config.training_params import render_default_yaml

    cfg, source = compose_recipe("cifar10_resnet", ["epochs=3", "lr=0.5", "lr=0.7"])
    assert source.origin("training_hyperparams.max_epochs") == "command-line override 'epochs=3'"
    # Hydra applies the last of repeated overrides: that is the one named.
    assert source.origin("training_hyperparams.initial_lr") == "command-line override 'lr=0.7'"
    assert cfg.training_hyperparams.initial_lr == 0.7
    lines = (recipes_dir() / "training_hyperparams" / "cifar10_resnet_train_params.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("lr_updates:"))
    assert source.origin("training_hyperparams.lr_updates").endswith(
        f"training_hyperparams/cifar10_resnet_train_params.yaml:{line}")
    seed_line = render_default_yaml().splitlines().index("seed: 42") + 1
    assert source.origin("training_hyperparams.seed").endswith(
        f"training_hyperparams/default_train_params.yaml:{seed_line}")
    assert ".yaml:" in source.origin("architecture") and "cifar10_resnet.yaml" in source.origin("architecture")


def test_user_config_dir_uses_shipped_groups(tmp_path):
    (tmp_path / "my_recipe.yaml").write_text(
        "defaults:\n  - training_hyperparams: default_train_params\n  - dataset_params: shapes_dataset_params\n"
        "  - arch_params: default_arch_params\n  - checkpoint_params: default_checkpoint_params\n  - _self_\n"
        "architecture: resnet_tiny_cifar\narch_params: {num_classes: 6}\ntrain_dataloader: shapes_train\n"
        "experiment_name: mine\ntraining_hyperparams:\n  max_epoch: 3\n")
    cfg, source = compose_recipe("my_recipe", config_dir=tmp_path)
    assert cfg.experiment_name == "mine"
    with pytest.raises(RecipeError) as info:
        run_recipe(cfg, source)
    message = str(info.value)
    assert "training_hyperparams.max_epoch" in message and "my_recipe.yaml" in message
    assert "Did you mean: max_epochs" in message


def test_unknown_group_option_lists_options():
    with pytest.raises(RecipeError, match=r"(?s)dataset_params.*cifar10_dataset_params"):
        compose_recipe("shapes_resnet", ["dataset_params=cifar10_datset_params"])


def _one_step(name: str, tmp_path, extra: list[str] = ()) -> dict:
    cfg, source = compose_recipe(name, [
        "epochs=1", "training_hyperparams.max_train_batches=1", "training_hyperparams.max_valid_batches=1",
        "batch_size=4", "val_batch_size=4", "num_workers=0", f"ckpt_root_dir={tmp_path / 'ckpt'}",
        "training_hyperparams.silent_mode=true", "device=cpu", *extra])
    return run_recipe(cfg, source)


# Per COCO recipe family (longest prefix first): the smallest size at a small input keeps two steps affordable.
COCO_SMALL_RUN: dict[str, list[str]] = {
    "coco2017_yolox": ["dataset_params.train_dataset_params.input_dim=[160,160]",
                       "dataset_params.val_dataset_params.input_dim=[160,160]", "architecture=yolox_n"],
    "coco2017_ppyoloe": ["dataset_params.train_dataset_params.input_dim=[160,160]",
                         "dataset_params.val_dataset_params.input_dim=[160,160]",
                         "dataset_params.train_dataloader_params.collate_fn.PPYoloECollateFN.random_resize_sizes="
                         "[128,160]", "architecture=ppyoloe_s", "training_hyperparams.lr_warmup_steps=1"],
    "coco2017_yolo_nas": ["dataset_params.train_dataset_params.input_dim=[160,160]",
                          "dataset_params.val_dataset_params.input_dim=[160,160]", "architecture=yolo_nas_s",
                          "training_hyperparams.lr_warmup_steps=1"],
    "coco2017_ssd_lite": ["dataset_params.train_dataset_params.input_dim=[160,160]",
                          "dataset_params.val_dataset_params.input_dim=[160,160]"],
}
# voc0712_yolox_s at 160 px, two real steps (07+12 trainval of the tiny VOCdevkit: 9 images), validated on 07 test.
VOC_SMALL_RUN: list[str] = [
    "dataset_params.train_dataset_params.input_dim=[160,160]", "dataset_params.val_dataset_params.input_dim=[160,160]",
    "training_hyperparams.max_train_batches=2", "training_hyperparams.lr_warmup_epochs=0",
    "training_hyperparams.lr_cooldown_epochs=0", "training_hyperparams.mixed_precision=false"]


def _data_overrides(name: str, tmp_path) -> list[str]:
    """Point a recipe at small real data, as a user points it at their copy (CIFAR pickles, COCO images)."""
    from tests.conftest import write_cifar10
    from tests.test_yolox_recipes import TINYCOCO, coco_data_overrides

    if "cifar10" in name:
        root = write_cifar10(tmp_path / "cifar10")
        return [f"dataset_params.train_dataset_params.root={root}", f"dataset_params.val_dataset_params.root={root}"]
    if "coco2017" in name:
        if not (TINYCOCO / "annotations").is_dir():
            pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
        family = next(prefix for prefix in COCO_SMALL_RUN if name.startswith(prefix))
        return [*coco_data_overrides(TINYCOCO), "training_hyperparams.lr_warmup_epochs=0",
                "training_hyperparams.lr_cooldown_epochs=0", "training_hyperparams.mixed_precision=false",
                *COCO_SMALL_RUN[family]]
    if name.startswith("voc"):
        from tests.test_voc_detection import write_voc_detection

        root = write_voc_detection(tmp_path / "voc")
        return [f"dataset_params.train_dataset_params.data_dir={root}",
                f"dataset_params.val_dataset_params.data_dir={root}", *VOC_SMALL_RUN]
    if name.startswith("cityscapes_"):
        # Real-format Cityscapes frames (16x32) under the user's data folder; the published crops pad them. Batches
        # of 2 and one process keep two steps of the full-size models affordable on a CPU.
        from tests.test_segmentation_data import write_cityscapes

        write_cityscapes(tmp_path / "cityscapes")
        return [f"dataset_params.train_dataset_params.data_dir={tmp_path / 'cityscapes'}",
                f"dataset_params.val_dataset_params.data_dir={tmp_path / 'cityscapes'}",
                "batch_size=2", "val_batch_size=2", "multi_gpu=Off", "num_gpus=1",
                "training_hyperparams.max_train_batches=2", "training_hyperparams.lr_warmup_epochs=0"]
    if name.startswith("imagenet_"):
        # A tiny ImageNet folder (2 classes x 4 real JPEGs), the recipe's own architecture at 64 px, two steps.
        from tests.test_imagenet_recipes import imagenet_data_overrides

        return imagenet_data_overrides(name, tmp_path / "imagenet")
    if name.startswith("shapes_yolo"):
        return ["training_hyperparams.lr_warmup_steps=1", f"dataset_params.train_dataset_params.data_dir={tmp_path}/d",
                f"dataset_params.val_dataset_params.data_dir={tmp_path}/d"]
    return []


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_runs_one_step(name, tmp_path):
    record = _one_step(name, tmp_path, _data_overrides(name, tmp_path))
    cfg, _ = compose_recipe(name)
    folder = tmp_path / "ckpt" / cfg.experiment_name
    assert (folder / "recipe.yaml").is_file() and (folder / "ckpt_latest.pth").is_file()
    assert record["epoch"] == 0 and f"valid/{cfg.training_hyperparams.metric_to_watch}" in record


def test_readme_documents_every_training_key():
    readme = (recipes_dir().parent / "README.md")
    if not readme.is_file():
        pytest.skip("README.md is not next to the recipes (installed wheel)")
    text = readme.read_text()
    missing = [f.name for f in fields(TrainingParams) if f"| `{f.name}` |" not in text]
    assert not missing, f"README's training_hyperparams table lacks {missing}"
