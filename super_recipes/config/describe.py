"""Objects written down: how a run with Python objects in its training params is recorded in ``recipe.yaml`` and
in checkpoints, and compared when it is resumed.

An object becomes ``{_target_: package.module.Class, arg: value, ...}`` with the constructor arguments that can
be read back from its attributes (primitives only), a function or class its qualified name. Describing never
fails: whatever cannot be read is left out. The same-run check of a resumed run compares objects by qualified
name only (:func:`run_form`), since their arguments are known only where the object exposes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

PRIMITIVES = (str, int, float, bool, type(None))


def qualified_name(obj: Any) -> str:
    """``package.module.Name`` of a class or function, or of an object's class."""
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def describe(value: Any) -> Any:
    """A YAML-friendly record of ``value``: containers recursively, objects as ``_target_`` nodes."""
    return _record(value, lambda obj: {"_target_": qualified_name(obj), **_known_arguments(obj)})


def run_form(value: Any) -> Any:
    """What the same-run check compares: like :func:`describe`, but an object is its qualified name alone."""
    return _record(value, qualified_name)


def _record(value: Any, object_form: Callable[[Any], Any]) -> Any:
    if isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, Mapping):
        return {str(k if isinstance(k, str) else qualified_name(k)): _record(v, object_form) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_record(v, object_form) for v in value]
    if inspect.isclass(value) or inspect.isroutine(value):
        return qualified_name(value)
    return object_form(value)


def _known_arguments(obj: Any) -> dict[str, Any]:
    try:
        import torch

        if isinstance(obj, torch.optim.Optimizer):
            return {k: _plain(v) for k, v in obj.defaults.items() if _plain(v) is not _SKIP}
        parameters = inspect.signature(type(obj).__init__).parameters
    except Exception:  # an exotic class: record the name alone rather than fail the run
        return {}
    known = {}
    for name, parameter in parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        try:
            value = _plain(getattr(obj, name))
        except Exception:
            continue
        if value is not _SKIP:
            known[name] = value
    return known


_SKIP = object()


def _plain(value: Any) -> Any:
    if isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, PRIMITIVES) for v in value):
        return list(value)
    return _SKIP
