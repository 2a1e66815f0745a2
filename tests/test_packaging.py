"""The recipe tree ships inside the wheel and is found both from the checkout and from an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import super_recipes
from super_recipes.paths import recipes_dir
from tests.conftest import REPO_ROOT


def test_checkout_uses_the_repository_recipes():
    if __import__("pathlib").Path(super_recipes.__file__).parent == (REPO_ROOT / "super_recipes"):
        assert recipes_dir() == REPO_ROOT / "recipes"
    assert (recipes_dir() / "shapes_resnet.yaml").is_file()


def test_installed_wheel_finds_its_recipes(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO_ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("super_recipes-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(str(p.relative_to(REPO_ROOT / "recipes")) for p in (REPO_ROOT / "recipes").rglob("*.yaml"))
    assert shipped and all(f"super_recipes/recipes/{name}" in names for name in shipped)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import super_recipes.paths as p; from super_recipes.config.compose import compose_recipe; "
             "cfg, _ = compose_recipe('cifar10_resnet', ['epochs=2']); "
             "print(p.recipes_dir()); print(cfg.training_hyperparams.max_epochs)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True)
    folder, epochs = out.stdout.split()
    assert folder == str(site / "super_recipes" / "recipes") and epochs == "2"
