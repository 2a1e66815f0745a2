"""The published ImageNet recipes (their key values and header figures), MixUp/CutMix collate, and the tiny
ImageNet-format folder that tests/test_recipes.py trains every ``imagenet_*`` recipe on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from super_recipes.config.compose import compose_recipe
from super_recipes.errors import RecipeError
from super_recipes.paths import recipes_dir

WNIDS = ("n01440764", "n01443537")  # two real ImageNet class folders (tench, goldfish)


def write_imagenet(root: Path, per_class: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A tiny ImageNet in its real layout, ``root/{train,val}/<wnid>/<name>.JPEG`` (JPEG files), returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for label, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # A class-dependent colour plus noise, not square: the crops and resizes see real work.
                pixels = rng.integers(0, 60, (size, size + 8, 3)) + np.array([150, 60, 30]) * (label + 1) % 256
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{label * per_class + i:08d}.JPEG"
                Image.fromarray(pixels.astype(np.uint8)).save(folder / name, quality=90)
    return root


def imagenet_data_overrides(name: str, root: Path, size: int = 64) -> list[str]:
    """Point an ``imagenet_*`` recipe at the tiny folder at ``size`` px: two real steps on one CPU process.

    The recipe's own architecture, crops shrunk to ``size`` (ViT is built for that image size), float32.
    """
    write_imagenet(root)
    overrides = [
        f"dataset_params.train_dataset_params.root={root / 'train'}",
        f"dataset_params.val_dataset_params.root={root / 'val'}",
        f"dataset_params.train_dataset_params.transforms.0.RandomResizedCrop.size={size}",
        f"dataset_params.val_dataset_params.transforms.0.Resize.size={size}",
        f"dataset_params.val_dataset_params.transforms.1.CenterCrop.size={size}",
        "batch_size=4", "val_batch_size=4", "multi_gpu=Off", "num_gpus=1",
        "training_hyperparams.max_train_batches=2", "training_hyperparams.mixed_precision=false",
        "training_hyperparams.lr_warmup_epochs=0",
    ]
    if compose_recipe(name)[0].architecture == "vit_b_16":
        overrides.append(f"+arch_params.image_size={size}")
    return overrides


# ---------------------------------------------------------------- published values, one test per family


def _hp(name: str):
    cfg, _ = compose_recipe(name)
    return cfg, cfg.training_hyperparams


def _header(name: str) -> str:
    return (recipes_dir() / f"{name}.yaml").read_text()


def _step_milestones(period_num: int, period_den: int, epochs: int) -> list[int]:
    """Integer epochs at which SG's "x decay every period epochs" takes effect (period = num / den)."""
    return [math.ceil(k * period_num / period_den) for k in range(1, epochs) if k * period_num < epochs * period_den]


def test_resnet50_recipe():
    cfg, hp = _hp("imagenet_resnet50")
    assert cfg.architecture == "resnet50" and cfg.arch_params.num_classes == 1000
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.lr_warmup_epochs) == (
        400, 0.1, "SGD", "cosine", 5)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 1e-4} and hp.zero_weight_decay_on_bias_and_bn
    assert hp.criterion_params.label_smoothing == 0.1 and hp.mixed_precision and not hp.ema
    data = cfg.dataset_params
    assert data.train_dataloader_params.batch_size == 64  # x 4 GPUs = 256
    assert dict(data.train_dataloader_params.collate_fn.MixUpCutMixCollate) == {
        "num_classes": 1000, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}
    assert {"RandAugment": {"num_ops": 2, "magnitude": 7}} in data.train_dataset_params.transforms
    assert data.val_dataset_params.transforms[0] == {"Resize": {"size": 236}}
    assert "79.47" in _header("imagenet_resnet50") and "76.3" in _header("imagenet_resnet50")


@pytest.mark.parametrize(("name", "published"), [("imagenet_resnet18", "69.758"), ("imagenet_resnet34", "73.314")])
def test_resnet18_34_torchvision_recipe(name, published):
    cfg, hp = _hp(name)
    assert cfg.architecture == name.removeprefix("imagenet_")
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, list(hp.lr_updates), hp.lr_decay_factor) == (
        90, 0.1, "SGD", "step", [30, 60], 0.1)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 1e-4}
    assert cfg.dataset_params.train_dataloader_params.batch_size == 32  # x 8 GPUs = 256
    assert published in _header(name)


@pytest.mark.parametrize(("name", "arch", "batch", "published"), [
    ("imagenet_efficientnet_b0", "efficientnet_b0", 64, ["77.62"]),
    ("imagenet_regnetY", "regnetY800", 256, ["70.88", "74.74", "76.18", "77.07"]),
])
def test_rmsprop_step_recipes(name, arch, batch, published):
    cfg, hp = _hp(name)
    assert cfg.architecture == arch
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_warmup_epochs, hp.warmup_initial_lr) == (
        450, 0.016, "RMSprop", 3, 1e-6)
    assert hp.optimizer_params.weight_decay == 1e-5 and hp.optimizer_params.momentum == 0.9
    assert hp.optimizer_params.eps == pytest.approx(math.sqrt(1e-3), rel=1e-3)  # TF eps 1e-3 inside the root
    assert hp.lr_mode == "step" and hp.lr_decay_factor == 0.97
    assert list(hp.lr_updates) == _step_milestones(12, 5, 450)  # every 2.4 epochs
    assert hp.ema and dict(hp.ema_params)["decay"] == 0.9999 and hp.ema_params.decay_type == "constant"
    assert hp.criterion_params.label_smoothing == 0.1 and hp.mixed_precision and hp.average_best_models
    data = cfg.dataset_params
    assert data.train_dataloader_params.batch_size == batch
    assert {"RandomErase": {"probability": 0.2, "value": "random"}} in data.train_dataset_params.transforms
    assert all(figure in _header(name) for figure in published)
    if arch.startswith("regnetY"):
        assert cfg.arch_params.dropout_prob == 0.5 and cfg.arch_params.variant == "super_gradients"


def test_mobilenetv2_recipe():
    cfg, hp = _hp("imagenet_mobilenetv2")
    assert cfg.architecture == "mobilenet_v2" and cfg.arch_params.dropout == 0.2
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_warmup_epochs, hp.lr_decay_factor) == (
        450, 0.032, "RMSprop", 5, 0.973)
    assert list(hp.lr_updates) == _step_milestones(12, 5, 450) and hp.ema and hp.mixed_precision
    assert cfg.dataset_params.train_dataloader_params.batch_size == 256  # x 2 GPUs = 512
    assert {"RandAugment": {"num_ops": 2, "magnitude": 9}} in cfg.dataset_params.train_dataset_params.transforms
    assert "73.08" in _header("imagenet_mobilenetv2")


@pytest.mark.parametrize(("name", "arch", "epochs", "published"), [
    ("imagenet_mobilenetv3_large", "mobilenet_v3_large", 150, "73.79"),
    ("imagenet_mobilenetv3_large_300", "mobilenet_v3_large", 300, "74.52"),
    ("imagenet_mobilenetv3_small", "mobilenet_v3_small", 150, "67.45"),
])
def test_mobilenetv3_recipes(name, arch, epochs, published):
    cfg, hp = _hp(name)
    assert cfg.architecture == arch and cfg.arch_params.dropout == 0.2
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.lr_warmup_epochs) == (
        epochs, 0.1, "SGD", "cosine", 5)
    assert hp.optimizer_params.weight_decay == 4e-5 and hp.criterion_params.label_smoothing == 0.1 and hp.ema
    assert cfg.dataset_params.train_dataloader_params.batch_size == 128  # x 2 GPUs = 256
    assert published in _header(name)


def test_repvgg_a0_recipe():
    cfg, hp = _hp("imagenet_repvgg_a0")
    assert cfg.architecture == "repvgg_a0" and cfg.arch_params.build_residual_branches
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.cosine_final_lr_ratio, hp.lr_warmup_epochs) == (
        120, 0.1, "SGD", "cosine", 0.0, 0)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 1e-4} and hp.average_best_models
    assert cfg.dataset_params.train_dataloader_params.batch_size == 64  # x 4 GPUs = 256
    assert "72.05" in _header("imagenet_repvgg_a0")


def test_vit_base_finetuning_recipe():
    cfg, hp = _hp("imagenet_vit_base")
    assert cfg.architecture == "vit_b_16"
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.cosine_final_lr_ratio) == (
        10, 0.03, "SGD", "cosine", 0.0)
    assert (hp.lr_warmup_epochs, hp.warmup_initial_lr, hp.clip_grad_norm) == (1, 0.0, 1.0)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 0.0}
    assert hp.criterion_params.label_smoothing == 0.1
    data = cfg.dataset_params
    assert data.train_dataloader_params.batch_size == 64  # x 8 GPUs = 512
    assert "MixUpCutMixCollate" in data.train_dataloader_params.collate_fn
    assert {"Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}} in data.train_dataset_params.transforms
    assert data.val_dataset_params.transforms[0] == {"Resize": {"size": 249}}
    assert "84.15" in _header("imagenet_vit_base") and "81.072" in _header("imagenet_vit_base")


def test_imagenet_loaders_read_the_folder_with_fast_loader_settings(tmp_path):
    from torchvision.transforms import v2

    from super_recipes.data import dataloaders
    from super_recipes.registry import TRANSFORMS

    for name in ("RandAugment", "AutoAugment", "TrivialAugmentWide", "RandomResizedCrop", "ColorJitter"):
        assert TRANSFORMS.get(name) is getattr(v2, name)  # torchvision v2 names resolve through the fallback

    root = write_imagenet(tmp_path / "imagenet")
    loader = dataloaders.get("imagenet_train", dataset_params={
        "root": str(root / "train"), "transforms": [{"RandomResizedCrop": {"size": 32}}, "RandomHorizontalFlip",
                                                    {"RandAugment": {"num_ops": 2, "magnitude": 9}},
                                                    "ToFloatTensor", {"RandomErase": {"probability": 1.0}}]},
        dataloader_params={"num_workers": 2, "batch_size": 4,  # worker processes mix, as in a real run
                           "collate_fn": {"MixUpCutMixCollate": {"num_classes": 2}}})
    assert loader.dataset.class_names == WNIDS and len(loader.dataset) == 8
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 2)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert loader.persistent_workers  # from the shipped group file
    shipped = dataloaders.load_dataset_params("imagenet_dataset_params")["train_dataloader_params"]
    assert shipped["pin_memory"] and shipped["persistent_workers"] and shipped["num_workers"] > 0


# ---------------------------------------------------------------- MixUp / CutMix collate


def _batch(n: int = 6, size: int = 8) -> tuple[list, torch.Tensor]:
    """Sample i is a constant image of value i + 1 with label i % 3: each pixel says where it came from."""
    labels = torch.tensor([i % 3 for i in range(n)])
    return [(torch.full((3, size, size), float(i + 1)), int(labels[i])) for i in range(n)], labels


def _one_hot(labels: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return torch.eye(classes)[labels]


def test_mixup_mixes_each_image_with_its_neighbour_and_labels_alike():
    from super_recipes.data.mixing import MixUpCutMixCollate

    torch.manual_seed(0)
    batch, labels = _batch()
    images, targets = MixUpCutMixCollate(num_classes=3, mixup_alpha=0.4, cutmix_alpha=0.0)(batch)
    assert images.shape == (6, 3, 8, 8) and targets.shape == (6, 3) and targets.dtype == torch.float32
    own = torch.arange(1, 7, dtype=torch.float32)
    partner = own.roll(1)  # torchvision pairs sample i with sample i - 1
    lam = (images[:, 0, 0, 0] - partner) / (own - partner)
    assert torch.allclose(lam, lam[0].expand(6), atol=1e-5) and 0 <= float(lam[0]) <= 1  # one ratio per batch
    assert torch.allclose(images, images[:, :1, :1, :1].expand_as(images))  # a uniform blend
    expected = lam[0] * _one_hot(labels) + (1 - lam[0]) * _one_hot(labels.roll(1))
    assert torch.allclose(targets, expected, atol=1e-5)


def test_cutmix_pastes_a_box_and_labels_by_its_area():
    from super_recipes.data.mixing import MixUpCutMixCollate

    torch.manual_seed(3)
    batch, labels = _batch(size=16)
    collate = MixUpCutMixCollate(num_classes=3, mixup_alpha=0.0, cutmix_alpha=1.0)
    for _ in range(5):
        images, targets = collate(batch)
        own = torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1)
        keeps = (images == own)[:, 0]
        pasted = (images == own.roll(1, 0))[:, 0]
        assert bool((keeps | pasted).all())  # every pixel is its own or its neighbour's
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # one box for the whole batch
        lam = keeps[0].float().mean()  # area ratio kept, as the labels must say
        expected = lam * _one_hot(labels) + (1 - lam) * _one_hot(labels.roll(1))
        assert torch.allclose(targets, expected, atol=1e-6)


def test_switching_probability_and_label_smoothing():
    from super_recipes.data.mixing import MixUpCutMixCollate

    batch, labels = _batch(size=16)
    torch.manual_seed(0)
    kinds = []
    for _ in range(40):
        images, _ = MixUpCutMixCollate(num_classes=3, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)(batch)
        values = images[0, 0].unique()
        kinds.append("cutmix" if len(values) <= 2 and bool(torch.isin(values, torch.tensor([1.0, 6.0])).all())
                     else "mixup")
    assert 8 <= kinds.count("cutmix") <= 32  # both used, about half each
    images, targets = MixUpCutMixCollate(num_classes=3, prob=0.0, label_smoothing=0.3)(batch)
    assert torch.equal(images, torch.stack([b[0] for b in batch]))  # prob 0: unmixed
    assert torch.allclose(targets, _one_hot(labels) * 0.7 + 0.1)


def test_loss_label_smoothing_on_soft_targets_equals_smoothing_in_the_mix():
    from super_recipes.metrics import Accuracy

    torch.manual_seed(0)
    logits, a, b, lam, eps = torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.randint(0, 4, (5,)), 0.3, 0.1
    mixed = lam * _one_hot(a, 4) + (1 - lam) * _one_hot(b, 4)
    smoothed = lam * (_one_hot(a, 4) * (1 - eps) + eps / 4) + (1 - lam) * (_one_hot(b, 4) * (1 - eps) + eps / 4)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=eps)(logits, mixed)
    oracle = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss, oracle, atol=1e-6)
    metric = Accuracy()
    metric.update(logits, mixed)  # soft targets score against their argmax
    assert float(metric.compute()) == pytest.approx(float((logits.argmax(1) == mixed.argmax(1)).float().mean()))


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"num_classes": 3, "mixup_alpha": 0, "cutmix_alpha": 0},
                                    {"num_classes": 3, "prob": 1.5}, {"num_classes": 3, "mixup_alpha": -1}])
def test_bad_mixing_arguments_are_recipe_errors(kwargs):
    from super_recipes.data.mixing import MixUpCutMixCollate

    with pytest.raises(RecipeError, match="MixUpCutMixCollate"):
        MixUpCutMixCollate(**kwargs)


def test_label_beyond_num_classes_is_a_recipe_error():
    from super_recipes.data.mixing import MixUpCutMixCollate

    batch, _ = _batch()
    with pytest.raises(RecipeError, match="num_classes"):
        MixUpCutMixCollate(num_classes=2)(batch)


def test_random_erase_fills_a_box_with_noise_or_a_value():
    from super_recipes.data.mixing import RandomErase
    from super_recipes.registry import TRANSFORMS

    assert TRANSFORMS.get("RandomErase") is RandomErase
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 5.0)
    noisy = RandomErase(probability=1.0)(image)
    box = noisy != 5.0
    assert 0.02 * 3 * 32 * 32 <= int(box.sum()) <= 0.34 * 3 * 32 * 32 and float(noisy[box].std()) > 0.5
    zeroed = RandomErase(probability=1.0, value=0)(image)
    assert set(zeroed.unique().tolist()) == {0.0, 5.0}
    assert torch.equal(RandomErase(probability=0.0)(image), image)
    with pytest.raises(RecipeError, match="RandomErase"):
        RandomErase(value="noise")
