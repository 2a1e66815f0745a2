"""``python -m super_recipes.models``: the zoo table's parameters and GFLOPs against torchvision's published model
metadata, its weight tags and accuracies, and errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torchvision

from super_recipes.models.zoo import classification_names, zoo_rows


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0"])
def test_counts_equal_torchvision_metadata(name):
    (row,) = zoo_rows([name])
    default = torchvision.models.get_model_weights(name).DEFAULT
    assert round(row.params_m * 1e6) == default.meta["num_params"]
    assert row.gflops == pytest.approx(default.meta["_ops"], abs=0.01)
    assert row.resolution == default.transforms().crop_size[0]
    assert row.weights[0].startswith("imagenet")
    assert f"{default.meta['_metrics']['ImageNet-1K']['acc@1']:.2f}%" in row.published
    assert any(tag.startswith(default.name) for tag in row.weights)


def test_own_architectures_and_the_command_line(tmp_path):
    (row,) = zoo_rows(["resnet18_cifar"])
    assert row.resolution == 32 and row.params_m == pytest.approx(11.17, abs=0.01) and "94.9" in row.published
    out = tmp_path / "zoo.csv"
    done = subprocess.run([sys.executable, "-m", "super_recipes.models", "resnet18", "resnet18_cifar", "--csv",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| resnet18 | 11.69 | 1.81 | 224 |" in done.stdout
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "architecture" and [r[0] for r in rows[1:]] == ["resnet18", "resnet18_cifar"]


def test_listing_covers_classification_only_and_names_unknowns():
    names = classification_names()
    assert "resnet50" in names and "vit_b_16" in names
    assert not {"yolox_s", "ppyoloe_s", "ddrnet_23"} & set(names)
    done = subprocess.run([sys.executable, "-m", "super_recipes.models", "resnet5"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "resnet50" in done.stderr and "Traceback" not in done.stderr


def test_the_whole_table_builds():
    needs_arch_params: list[str] = []
    rows = {row.name: row for row in zoo_rows(None, needs_arch_params)}
    assert "custom_resnet" in needs_arch_params and not {"repvgg_custom", "nas_regnet"} & set(rows)
    assert {"regnet_y_32gf", "regnetY800", "repvgg_d2se", "darknet53"} <= set(rows)  # built off the meta device too
    # A 1.x alias lists the weights and accuracy of the torchvision network it names.
    assert rows["resnext50"].weights == rows["resnext50_32x4d"].weights and "81.20%" in rows["resnext50"].published
