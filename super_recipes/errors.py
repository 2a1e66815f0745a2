"""User-facing errors: a bad recipe, name, path or checkpoint is reported in one screen, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RecipeError(Exception):
    """A mistake in a recipe, an override or a call that the user can fix.

    The command-line runner prints only the message (no traceback unless ``HYDRA_FULL_ERROR=1`` or
    ``SUPER_RECIPES_DEBUG=1``) and exits with status 1. ``key`` is the dotted recipe key at fault, when known,
    so the runner can add the file or override that set it.
    """

    def __init__(self, message: str = "", key: str | None = None):
        super().__init__(message)
        self.key = key


def closest_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The registered/valid names that look most like ``name`` (case-insensitive), best first."""
    candidates = sorted(set(candidates))
    by_lower = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    # A prefix or substring match (``resnet`` -> ``resnet18``) is often what the user meant even when the
    # similarity ratio is low, so add those after the fuzzy matches.
    for lower in by_lower:
        if len(matches) >= n:
            break
        if name.lower() and (name.lower() in lower or lower in name.lower()) and lower not in matches:
            matches.append(lower)
    return [by_lower[m] for m in matches]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``Did you mean ...?`` sentence, or an empty string when nothing is close."""
    close = closest_names(name, candidates)
    return f"Did you mean: {', '.join(close)}?" if close else ""


def unknown_name_message(kind: str, name: str, candidates: Iterable[str], where: str = "") -> str:
    """One-screen message for an unknown ``kind`` name, with the closest valid names."""
    candidates = sorted(set(candidates))
    location = f" (in {where})" if where else ""
    lines = [f"Unknown {kind} '{name}'{location}."]
    hint = did_you_mean(name, candidates)
    if hint:
        lines.append(hint)
    if len(candidates) <= 40:
        lines.append(f"Valid {kind} names: {', '.join(candidates)}")
    else:
        lines.append(f"{len(candidates)} {kind} names are registered; list them with "
                     f"`python -m super_recipes.registry {kind}`.")
    return "\n".join(lines)
