"""Where the shipped recipe tree is: inside the installed wheel, or at the top of an editable checkout."""

from __future__ import annotations

from pathlib import Path


def recipes_dir() -> Path:
    """The folder holding the shipped recipes (``recipes/`` in the repository, ``super_recipes/recipes`` in a wheel)."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "recipes", package_dir.parent / "recipes"):
        if (candidate / "training_hyperparams").is_dir():
            return candidate
    raise FileNotFoundError(
        f"The super_recipes recipe tree was not found next to {package_dir}; the installation is incomplete."
    )
