"""Collate functions for ``dataloader_params.collate_fn``.

Registered entries are factories: the recipe value ``collate_fn: DefaultCollateFN`` (or ``{Name: {kwargs}}``)
is instantiated once, and the instance is what the DataLoader calls per batch.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import default_collate

from super_recipes.registry import register_collate_function


@register_collate_function
class DefaultCollateFN:
    """PyTorch's ``default_collate`` (stack tensors, numbers and nested containers); serves ``collate_fn``."""

    def __call__(self, batch: list[Any]) -> Any:
        return default_collate(batch)

    def __repr__(self) -> str:
        return "DefaultCollateFN()"

