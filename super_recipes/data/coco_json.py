"""Open a COCO annotation file (``json_file`` of the COCO datasets of every task) with pycocotools."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from super_recipes.errors import RecipeError


def open_coco(json_path: str | Path) -> tuple[Any, list[dict[str, Any]]]:
    """The ``pycocotools.coco.COCO`` index of ``json_path`` and its categories sorted by id (the order the
    datasets number classes in); a RecipeError naming the file when it is not valid COCO JSON."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO(str(json_path))
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise RecipeError(f"{json_path} is not a valid COCO annotation file: {err!r}") from None
    return coco, sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
