"""The registry: registration, name conflicts, the four spec forms, and errors with the closest names."""

from __future__ import annotations

import pytest
import torch

from super_recipes.errors import RecipeError, closest_names
from super_recipes.registry import (
    LOSSES,
    METRICS,
    OPTIMIZERS,
    REGISTRIES,
    Registry,
    build,
    build_list,
)


def test_register_and_build_all_spec_forms():
    registry = Registry("widget")

    @registry.register
    class Knob:
        def __init__(self, size: int = 1):
            self.size = size

    @registry.register("big_knob")
    def make_big(size: int = 10):
        return Knob(size)

    assert build(registry, "Knob").size == 1
    assert build(registry, {"Knob": {"size": 3}}).size == 3
    assert build(registry, {"big_knob": None}).size == 10
    assert [k.size for k in build_list(registry, ["Knob", {"big_knob": {"size": 5}}])] == [1, 5]
    target = build(registry, {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3})
    assert isinstance(target, torch.nn.Linear) and target.out_features == 3


def test_taken_name_with_a_different_object_names_both():
    registry = Registry("widget")
    registry.register("thing")(int)
    registry.register("thing")(int)  # same object again: fine (module imported twice)
    with pytest.raises(RecipeError, match=r"'thing'.*builtins\.float.*builtins\.int"):
        registry.register("thing")(float)


def test_unknown_name_lists_closest():
    with pytest.raises(RecipeError) as info:
        LOSSES.get("CrossEntropyLos", "training_hyperparams.loss")
    message = str(info.value)
    assert "Unknown loss 'CrossEntropyLos'" in message and "training_hyperparams.loss" in message
    assert "CrossEntropyLoss" in message.splitlines()[1]


def test_bad_kwargs_name_the_argument():
    with pytest.raises(RecipeError, match=r"unexpected argument.*'smoothing'.*label_smoothing"):
        build(LOSSES, {"CrossEntropyLoss": {"smoothing": 0.1}})


def test_library_fallbacks():
    assert LOSSES.get("MSELoss") is torch.nn.MSELoss
    assert OPTIMIZERS.get("AdamW") is torch.optim.AdamW
    assert "Accuracy" in METRICS and "Top5" in METRICS and "MeanSquaredError" in METRICS


def test_every_named_registry_exists():
    expected = {"models", "losses", "metrics", "callbacks", "datasets", "dataloaders", "transforms",
                "optimizers", "lr_schedules", "collate_functions"}
    assert expected <= set(REGISTRIES)
    for registry in REGISTRIES.values():
        registry.names()  # builtin modules import cleanly


def test_closest_names_prefers_prefixes_and_typos():
    assert sorted(closest_names("resnet", ["resnet18", "vit_b_16", "resnet34"])) == ["resnet18", "resnet34"]
    assert closest_names("max_epoch", ["max_epochs", "seed"]) == ["max_epochs"]


def test_on_demand_modules_import_and_stay_out_of_classification_runs():
    import importlib
    import subprocess
    import sys

    for registry in REGISTRIES.values():
        for module in registry.on_demand_modules:
            importlib.import_module(module)
    # Resolving classification names must not import the detection or segmentation packages.
    probe = ("import sys; from super_recipes.registry import DATALOADERS, METRICS, TRANSFORMS; "
             "METRICS.get('Accuracy'); TRANSFORMS.get('ToFloatTensor'); DATALOADERS.get('shapes_train'); "
             "from super_recipes.registry import LOSSES, MODELS; LOSSES.get('CrossEntropyLoss'); "
             "MODELS.get('resnet_tiny_cifar'); "
             "print(any(m.startswith(('super_recipes.detection', 'super_recipes.segmentation')) for m in sys.modules), "
             "'torchvision.transforms.v2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"  # nor torchvision's transforms (>1 s to import) for built-ins


def test_detection_readers_share_the_object_spec_grammar():
    from super_recipes.detection.coco_evaluation import CocoEvaluationCallback
    from super_recipes.detection.metrics import DetectionMetrics_050
    from super_recipes.detection.visualization import DetectionVisualizationCallback
    from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback

    path = "super_recipes.detection.yolox.postprocess.YoloXPostPredictionCallback"
    specs = [("YoloXPostPredictionCallback", 0.001), ({"YoloXPostPredictionCallback": {"conf": 0.2}}, 0.2),
             ({"_target_": path, "conf": 0.3}, 0.3), (path, 0.001), (YoloXPostPredictionCallback(conf=0.4), 0.4),
             (YoloXPostPredictionCallback, 0.001)]
    for spec, conf in specs:
        readers = [DetectionMetrics_050(num_cls=2, post_prediction_callback=spec).post_prediction_callback,
                   CocoEvaluationCallback(post_prediction_callback=spec).post_prediction_callback,
                   DetectionVisualizationCallback(post_prediction_callback=spec).post_prediction_callback]
        for callback in readers:
            assert isinstance(callback, YoloXPostPredictionCallback) and callback.conf == conf, spec
    with pytest.raises(RecipeError, match="Did you mean: YoloXPostPredictionCallback"):
        CocoEvaluationCallback(post_prediction_callback="YoloXPostPredictionCallbak")


def test_task_packages_declare_their_registry_modules():
    from super_recipes.detection.registry_modules import REGISTRY_MODULES
    from super_recipes.registry import MODELS, task_registry_modules

    assert task_registry_modules()["detection"] == REGISTRY_MODULES
    assert set(REGISTRY_MODULES["models"]) <= set(MODELS.on_demand_modules)
    assert set(REGISTRY_MODULES) <= {registry.key for registry in REGISTRIES.values()}
    assert "yolox_n" in MODELS.names()


def test_importing_the_trainer_and_building_classification_metrics_stays_light():
    import subprocess
    import sys

    probe = ("import sys; from super_recipes import Trainer, models, dataloaders; Trainer; "
             "from super_recipes.metrics import build_metrics; build_metrics(['Accuracy', 'Top5'], 'x'); "
             "print(sorted(m for m in ('torchvision', 'torchmetrics', 'tensorboard', 'hydra', 'cv2') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
