"""The SG 1.x walkthrough ("Integrating Your Training Code") on :mod:`super_recipes.compat.sg1`.

Same shape as the guide: a ``DatasetInterface`` subclass, a LeNet, a label-smoothing cross-entropy loss object,
metric objects and the guide's training parameter names, here on a small learnable in-memory problem
(each class is a fixed random 3x32x32 pattern plus noise) so that training finishes in seconds on CPU.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from super_recipes.compat.sg1 import DatasetInterface, SgModel, core_utils, cross_entropy, translate_training_params
from super_recipes.errors import RecipeError
from super_recipes.metrics import Accuracy, Top5

NUM_CLASSES = 10
MAX_EPOCHS = 4
INITIAL_LR = 0.05
LR_UPDATES = [2, 3]
LR_DECAY = 0.1
SMOOTH_EPS = 0.1


def pattern_images(count: int, seed: int, size: int = 32) -> torch.utils.data.TensorDataset:
    """``count`` images: class ``c``'s fixed pattern (the same for every split) plus per-sample noise."""
    patterns = torch.randn(NUM_CLASSES, 3, size, size, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    images = patterns[labels] + torch.randn(count, 3, size, size, generator=generator)
    return torch.utils.data.TensorDataset(images, labels)


class UserDataset(DatasetInterface):
    """The guide's dataset interface shape: read ``dataset_params``, set trainset/valset (and a testset)."""

    def __init__(self, name: str = "patterns", dataset_params: dict | None = None):
        super().__init__(dataset_params or {})
        self.dataset_name = name
        crop_size = core_utils.get_param(self.dataset_params, "crop_size", default_val=32)
        self.trainset = pattern_images(768, seed=1, size=crop_size)
        self.valset = pattern_images(256, seed=2, size=crop_size)
        self.testset = pattern_images(200, seed=3, size=crop_size)
        self.classes = [f"pattern_{i}" for i in range(NUM_CLASSES)]


class LeNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LabelSmoothingCrossEntropyLoss(nn.CrossEntropyLoss):
    """A user loss object in the guide's shape: a CrossEntropyLoss subclass with ``smooth_eps``."""

    def __init__(self, smooth_eps: float = SMOOTH_EPS, reduction: str = "mean"):
        super().__init__(reduction=reduction)
        self.smooth_eps = smooth_eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, smooth_eps=self.smooth_eps)


def walkthrough_params(**overrides: object) -> dict:
    """The guide's training parameter dict, scaled down."""
    return {"max_epochs": MAX_EPOCHS, "lr_updates": LR_UPDATES, "lr_decay_factor": LR_DECAY, "lr_mode": "step",
            "lr_warmup_epochs": 0, "initial_lr": INITIAL_LR, "loss": LabelSmoothingCrossEntropyLoss(),
            "criterion_params": {}, "optimizer": "SGD", "optimizer_params": {"weight_decay": 1e-4, "momentum": 0.9},
            "launch_tensorboard": False, "train_metrics_list": [Accuracy(), Top5()],
            "valid_metrics_list": [Accuracy(), Top5()], "loss_logging_items_names": ["Loss"],
            "metric_to_watch": "Accuracy", "greater_metric_to_watch_is_better": True, "silent_mode": True,
            **overrides}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SgModel, Path]:
    root = tmp_path_factory.mktemp("sg1")
    sg_model = SgModel(experiment_name="LeNet_patterns", device="cpu", ckpt_root_dir=root)
    sg_model.connect_dataset_interface(UserDataset(dataset_params={"batch_size": 32}), data_loader_num_workers=0)
    torch.manual_seed(0)  # the model is built before the Trainer seeds anything
    sg_model.build_model(LeNet())
    sg_model.train(walkthrough_params())
    return sg_model, root / "LeNet_patterns"


def read_metrics(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_training_learns_and_writes_the_experiment_folder(trained: tuple[SgModel, Path]) -> None:
    sg_model, folder = trained
    rows = read_metrics(folder)
    assert [int(r["epoch"]) for r in rows] == list(range(MAX_EPOCHS))
    assert {"train/Loss", "valid/Loss", "train/Accuracy", "train/Top5", "valid/Accuracy", "valid/Top5"} <= set(rows[0])
    accuracy = float(rows[-1]["valid/Accuracy"])
    assert accuracy > 0.9, f"validation accuracy {accuracy} (chance is 0.1)"
    assert float(rows[-1]["valid/Top5"]) >= accuracy
    assert float(rows[-1]["train/Loss"]) < float(rows[0]["train/Loss"])
    assert sg_model.best_metric == pytest.approx(max(float(r["valid/Accuracy"]) for r in rows))
    for name in ("ckpt_best.pth", "ckpt_latest.pth"):
        assert (folder / name).is_file()


def test_learning_rate_follows_the_step_schedule(trained: tuple[SgModel, Path]) -> None:
    _, folder = trained
    expected = [INITIAL_LR * LR_DECAY ** sum(epoch >= m for m in LR_UPDATES) for epoch in range(MAX_EPOCHS)]
    assert [float(r["lr"]) for r in read_metrics(folder)] == pytest.approx(expected)


def manual_evaluation(net: nn.Module, dataset: torch.utils.data.TensorDataset) -> tuple[float, float, float]:
    """(label-smoothed loss, accuracy, top-5 accuracy) of ``net`` over ``dataset``, computed here."""
    images, labels = dataset.tensors
    with torch.no_grad():
        logits = net.eval()(images)
    return (F.cross_entropy(logits, labels, label_smoothing=SMOOTH_EPS).item(),
            (logits.argmax(1) == labels).float().mean().item(),
            (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item())


def test_test_returns_the_loss_and_metrics_of_an_independent_evaluation(trained: tuple[SgModel, Path],
                                                                        tmp_path: Path) -> None:
    sg_model, _ = trained
    testset = sg_model.dataset_interface.testset
    # Defaults: the connected test loader, the training loss and the validation metrics; loss items first.
    assert sg_model.test() == pytest.approx(manual_evaluation(sg_model.net, testset), rel=1e-5)
    assert list(sg_model.last_test_results) == ["test/Loss", "test/Accuracy", "test/Top5"]
    only_top5 = sg_model.test(test_loader=sg_model.valid_loader, test_metrics_list=[Top5()])
    assert only_top5[1:] == pytest.approx(manual_evaluation(sg_model.net, sg_model.dataset_interface.valset)[2:])

    untrained = SgModel("untrained", device="cpu", ckpt_root_dir=tmp_path)  # non-trivial values to compare
    untrained.connect_dataset_interface(UserDataset(), data_loader_num_workers=0)
    torch.manual_seed(1)
    untrained.build_model(LeNet())
    with pytest.raises(RecipeError, match="test_metrics_list"):
        untrained.test()
    values = untrained.test(loss=LabelSmoothingCrossEntropyLoss(), test_metrics_list=[Accuracy(), Top5()])
    expected = manual_evaluation(untrained.net, testset)
    assert values == pytest.approx(expected, rel=1e-5) and expected[1] < 0.5
    assert untrained.test(test_metrics_list=[Accuracy()]) == pytest.approx(expected[1:2])  # no loss: metrics only


def test_build_model_with_load_checkpoint_resumes(trained: tuple[SgModel, Path], tmp_path: Path) -> None:
    _, folder = trained
    shutil.copytree(folder, tmp_path / folder.name)
    sg_model = SgModel(experiment_name=folder.name, device="cpu", ckpt_root_dir=tmp_path)
    sg_model.connect_dataset_interface(UserDataset(), data_loader_num_workers=0)
    sg_model.build_model(LeNet(), load_checkpoint=True)
    saved = torch.load(folder / "ckpt_latest.pth", map_location="cpu", weights_only=False)["net"]
    assert all(torch.equal(value, saved[key]) for key, value in sg_model.net.state_dict().items())
    sg_model.train(walkthrough_params(max_epochs=MAX_EPOCHS + 1))
    rows = read_metrics(tmp_path / folder.name)
    assert [int(r["epoch"]) for r in rows] == list(range(MAX_EPOCHS + 1))
    assert rows[:MAX_EPOCHS] == read_metrics(folder)  # the finished epochs were kept, not trained again
    assert float(rows[-1]["lr"]) == pytest.approx(INITIAL_LR * LR_DECAY ** 2)
    with pytest.raises(RecipeError, match="no checkpoint"):
        SgModel("nothing_here", device="cpu", ckpt_root_dir=tmp_path).build_model(LeNet(), load_checkpoint=True)


def test_build_model_by_registered_name(tmp_path: Path) -> None:
    sg_model = SgModel("resnet_patterns", device="cpu", ckpt_root_dir=tmp_path)
    dataset = UserDataset(dataset_params={"batch_size": 32, "crop_size": 16})
    sg_model.connect_dataset_interface(dataset, data_loader_num_workers=0)
    sg_model.build_model("resnet_tiny_cifar", arch_params={"width": 8})  # num_classes from the dataset's classes
    assert sg_model.net(torch.zeros(2, 3, 16, 16)).shape == (2, NUM_CLASSES)
    sg_model.train(walkthrough_params(max_epochs=1, max_train_batches=2, max_valid_batches=1))
    assert (tmp_path / "resnet_patterns" / "ckpt_best.pth").is_file()
    with pytest.raises(RecipeError, match="Unknown model"):
        sg_model.build_model("resnet_tiny_cifr")


def test_dataset_interface_defaults_and_loaders() -> None:
    dataset = UserDataset(dataset_params={"batch_size": 32})
    params = dataset.dataset_params
    assert (params.batch_size, params.val_batch_size, params.test_batch_size) == (32, 200, 200)
    assert params.dataset_dir == params["dataset_dir"] == "./data/"
    assert core_utils.get_param(params, "crop_size", default_val=32) == 32
    assert core_utils.get_param({"crop_size": 24}, "crop_size", default_val=32) == 24
    train, val, test, classes = dataset.get_data_loaders(num_workers=0, batch_size_factor=2)
    assert (train.batch_size, val.batch_size, test.batch_size) == (64, 400, 400)
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert classes == dataset.classes
    with pytest.raises(RecipeError, match="trainset"):
        DatasetInterface().build_data_loaders()


def test_what_cannot_apply_is_refused(tmp_path: Path) -> None:
    sg_model = SgModel("refusals", device="cpu", ckpt_root_dir=tmp_path)
    with pytest.raises(RecipeError, match="build_model"):
        sg_model.train(walkthrough_params())
    sg_model.build_model(LeNet())
    with pytest.raises(RecipeError, match="connect_dataset_interface"):
        sg_model.train(walkthrough_params())
    sg_model.connect_dataset_interface(UserDataset(), data_loader_num_workers=0)
    with pytest.raises(RecipeError, match="max_epochs"):
        sg_model.train(walkthrough_params(max_epoch=2))
    with pytest.raises(RecipeError, match="save_tensorboard_to_s3"):
        sg_model.train(walkthrough_params(save_tensorboard_to_s3=True))
    with pytest.raises(RecipeError, match="multi_gpu"):
        SgModel("dp", device="cpu", multi_gpu="DataParallel")
    with pytest.raises(RecipeError, match="local"):
        SgModel("s3", device="cpu", model_checkpoints_location="s3")


def test_sg1_spellings_are_translated() -> None:
    translated = translate_training_params({
        "loss": "cross_entropy", "criterion_params": {"smooth_eps": 0.1}, "optimizer": "RMSProp",
        "ema_params": {"decay": 0.999, "exp_activation": False}, "launch_tensorboard_process": False,
        "tb_files_user_prompt": False, "save_tensorboard_to_s3": False, "max_epochs": 3})
    assert translated == {"loss": "CrossEntropyLoss", "criterion_params": {"label_smoothing": 0.1},
                          "optimizer": "RMSprop", "ema_params": {"decay": 0.999, "decay_type": "constant"},
                          "launch_tensorboard": False, "max_epochs": 3}
    with pytest.raises(RecipeError, match="sg_logger"):
        translate_training_params({"sg_logger": "wandb_sg_logger"})


def test_importing_the_adapter_is_cheap_and_registers_nothing() -> None:
    code = ("import sys; import super_recipes.compat.sg1; from super_recipes.registry import MODELS; "
            "assert 'torch' not in sys.modules and not MODELS._entries")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    from super_recipes.compat import sg1

    assert (sg1.Accuracy, sg1.Top5) == (Accuracy, Top5)  # SG's training.metrics names, imported on first use


def test_cross_entropy_equals_torch_label_smoothing() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=generator)
    labels = torch.randint(0, 5, (12,), generator=generator)
    labels[3] = -100
    weight = torch.rand(5, generator=generator) + 0.5
    for reduction in ("mean", "sum", "none"):
        expected = F.cross_entropy(logits, labels, weight=weight, reduction=reduction, label_smoothing=0.2)
        assert torch.allclose(cross_entropy(logits, labels, weight=weight, reduction=reduction, smooth_eps=0.2),
                              expected, atol=1e-6)
    assert torch.allclose(cross_entropy(logits, labels), F.cross_entropy(logits, labels), atol=1e-6)
    soft = F.one_hot(labels.clamp(min=0), 5).float()
    assert torch.allclose(cross_entropy(F.log_softmax(logits, 1), soft, from_logits=False),
                          F.cross_entropy(logits, soft), atol=1e-6)


# Our own script in the walkthrough's shape; only its import lines name super_recipes (the guide's CIFAR10
# download becomes torchvision's offline FakeData, and max_epochs is small).
WALKTHROUGH_SCRIPT = '''
import torch.nn as nn
import torch.nn.functional as func
import torchvision.datasets as datasets
import torchvision.transforms as transforms

from super_recipes.compat.sg1 import DatasetInterface, SgModel, cross_entropy
from super_recipes.compat.sg1 import utils as core_utils
from super_recipes.metrics import Accuracy, Top5


class UserDataset(DatasetInterface):
    def __init__(self, name="fake_cifar10", dataset_params={}):
        super().__init__(dataset_params)
        self.dataset_name = name
        self.lib_dataset_params = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        crop_size = core_utils.get_param(self.dataset_params, "crop_size", default_val=32)
        normalize = transforms.Normalize(self.lib_dataset_params["mean"], self.lib_dataset_params["std"])
        transform_train = transforms.Compose([transforms.RandomCrop(crop_size, padding=4),
                                              transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
        transform_val = transforms.Compose([transforms.ToTensor(), normalize])
        assert self.dataset_params.dataset_dir == "./data/"
        self.trainset = datasets.FakeData(size=192, image_size=(3, 32, 32), num_classes=10,
                                          transform=transform_train)
        self.valset = datasets.FakeData(size=96, image_size=(3, 32, 32), num_classes=10, transform=transform_val,
                                        random_offset=1000)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = func.max_pool2d(func.relu(self.conv1(x)), 2)
        x = func.max_pool2d(func.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc3(func.relu(self.fc2(func.relu(self.fc1(x)))))


class LabelSmoothingCrossEntropyLoss(nn.CrossEntropyLoss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", smooth_eps=None, smooth_dist=None,
                 from_logits=True):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction)
        self.smooth_eps, self.smooth_dist, self.from_logits = smooth_eps, smooth_dist, from_logits

    def forward(self, input, target, smooth_dist=None):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, smooth_eps=self.smooth_eps,
                             smooth_dist=self.smooth_dist if smooth_dist is None else smooth_dist,
                             from_logits=self.from_logits)


sg_model = SgModel(experiment_name="LeNet_fake_cifar10_example")
dataset_params = {"batch_size": 64}
dataset = UserDataset(dataset_params=dataset_params)
sg_model.connect_dataset_interface(dataset)

network = LeNet()
sg_model.build_model(network)

train_metrics_list = [Accuracy(), Top5()]
valid_metrics_list = [Accuracy(), Top5()]

train_params = {"max_epochs": 2,
                "lr_updates": [1],
                "lr_decay_factor": 0.1,
                "lr_mode": "step",
                "lr_warmup_epochs": 0,
                "initial_lr": 0.1,
                "loss": LabelSmoothingCrossEntropyLoss(),
                "criterion_params": {},
                "optimizer": "SGD",
                "optimizer_params": {"weight_decay": 1e-4, "momentum": 0.9},
                "launch_tensorboard": False,
                "train_metrics_list": train_metrics_list,
                "valid_metrics_list": valid_metrics_list,
                "loss_logging_items_names": ["Loss"],
                "metric_to_watch": "Accuracy",
                "greater_metric_to_watch_is_better": True}

sg_model.train(train_params)
print("TEST", sg_model.test())
'''


def test_walkthrough_script_runs_with_only_its_imports_changed(tmp_path: Path) -> None:
    (tmp_path / "walkthrough.py").write_text(textwrap.dedent(WALKTHROUGH_SCRIPT))
    result = subprocess.run([sys.executable, "walkthrough.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    folder = tmp_path / "checkpoints" / "LeNet_fake_cifar10_example"
    assert (folder / "ckpt_best.pth").is_file()
    rows = read_metrics(folder)
    assert len(rows) == 2 and {"train/Loss", "valid/Accuracy", "valid/Top5"} <= set(rows[0])
    assert "TEST (" in result.stdout
