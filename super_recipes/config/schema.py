"""The typed-key machinery behind every recipe schema: precise types, ranges, help text, one checker.

A schema is a dataclass whose fields are declared with :func:`key` (default, help, range) and annotated with a
precise type: ``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal[...]``, ``list[T]``, ``dict[str, T]``,
unions, ``Callable``, a nested schema dataclass (a mapping with known keys), or one of the object kinds below,
which the Python API may pass instead of a recipe value (a loss object, metric objects, an optimizer...).

Why our own checker: OmegaConf's structured configs refuse any value that is not a YAML primitive (the Python
API passes objects), cannot express ranges (``max_epochs >= 1``) and report one terse error at a time; this
checks everything, converts ints to floats where a float is meant, and reports every bad key in one screen.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from super_recipes.errors import did_you_mean

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Rule:
    """The help text and numeric range of one key (every number inside the value must be in range)."""

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def range_text(self) -> str:
        parts = [f">= {_num(self.ge)}" if self.ge is not None else "", f"> {_num(self.gt)}" if self.gt is not None
                 else "", f"<= {_num(self.le)}" if self.le is not None else ""]
        return " and ".join(p for p in parts if p)

    def admits(self, number: float) -> bool:
        return not ((self.ge is not None and number < self.ge) or (self.gt is not None and number <= self.gt)
                    or (self.le is not None and number > self.le))


def key(default: Any = MISSING, help: str = "", *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, default_factory: Callable[[], Any] | None = None) -> Any:
    """A schema field: ``max_epochs: int = key(1, "epochs to train", ge=1)``. Mutable defaults are copied."""
    rule = Rule(help, ge, gt, le)
    if default_factory is None and isinstance(default, (list, dict)):
        value = default
        default_factory = lambda: _copy(value)  # noqa: E731
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


# ----------------------------------------------------------------------------------------------- object kinds
class ObjectKind:
    """A kind of Python object a key accepts from the Python API; ``matches`` decides, ``text`` names it."""

    text = "an object"

    @classmethod
    def matches(cls, value: Any) -> bool:
        raise NotImplementedError


class Spec(ObjectKind):
    """A recipe object spec: ``Name``, a dotted path, ``{Name: {kwargs}}`` or a ``_target_`` node."""

    text = "a spec (Name, {Name: {kwargs}} or a _target_ node)"

    @classmethod
    def matches(cls, value: Any) -> bool:
        if isinstance(value, str):
            return bool(value)
        if isinstance(value, Mapping):
            if "_target_" in value:
                return isinstance(value["_target_"], str)
            if len(value) == 1:
                (name, kwargs), = value.items()
                return isinstance(name, (str, type)) and (kwargs is None or isinstance(kwargs, Mapping))
        return False


class BuiltObject(ObjectKind):
    """Any object that is not a plain recipe value (a loss module, a metric, a callback, a function...)."""

    text = "an object"

    @classmethod
    def matches(cls, value: Any) -> bool:
        return not isinstance(value, (str, int, float, bool, list, tuple, dict, type(None)))


class AnyClass(ObjectKind):
    text = "a class"

    @classmethod
    def matches(cls, value: Any) -> bool:
        return inspect.isclass(value)


# --------------------------------------------------------------------------------------------------- checking
@dataclass
class Problem:
    """One bad value: the dotted key inside the schema and what is wrong with it."""

    path: str
    message: str


def check_schema(schema: type, values: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[Problem]]:
    """Check ``values`` against the dataclass ``schema``: ``(typed values with defaults filled in, problems)``.

    Unknown keys are problems naming the closest valid keys; missing keys take their defaults (a key without a
    default is a problem).
    """
    hints = schema_hints(schema)
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    names = list(hints)
    for name in values:
        if name not in hints:
            problems.append(Problem(f"{prefix}{name}", f"unknown key. {did_you_mean(str(name), names)}".rstrip()))
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        if f.name not in values:
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
            else:
                problems.append(Problem(path, "required, but missing"))
            continue
        rule: Rule = f.metadata.get("rule", Rule(""))
        try:
            value, problem = check_value(values[f.name], hints[f.name], rule, path)
        except SchemaProblems as nested:
            problems.extend(nested.problems)
            continue
        if problem:
            problems.append(Problem(path, problem))
        else:
            out[f.name] = value
    return out, problems


def check_value(value: Any, hint: Any, rule: Rule, path: str) -> tuple[Any, str]:
    """``(converted value, "")`` when ``value`` fits ``hint`` and ``rule``, else ``(None, what is wrong)``."""
    converted, ok = _convert(value, hint, path)
    if not ok:
        item = _first_bad_item(value, hint)
        where = f" (item [{item[0]}]: {_show(item[1])})" if item else ""
        choices = _literal_strings(hint)
        hint_text = f" {did_you_mean(value, choices)}" if isinstance(value, str) and choices else ""
        return None, f"expected {describe(hint, rule)}, got {_show(value)}{where}.{hint_text}".rstrip(".")
    bad = next((n for n in _numbers(converted) if not rule.admits(n)), None)
    if bad is not None:
        return None, f"expected {describe(hint, rule)}, got {_show(value)}"
    return converted, ""


def _convert(value: Any, hint: Any, path: str) -> tuple[Any, bool]:
    """Convert/validate recursively; ``(value, ok)``. Nested schemas recurse through :func:`check_schema`."""
    if hint is Any:
        return value, True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _convert(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        for alternative in args:
            converted, ok = _convert(value, alternative, path)
            if ok:
                return converted, True
        return None, False
    if origin is Literal:
        return value, any(value == a and type(value) is type(a) for a in args)
    if hint is type(None) or hint is None:
        return None, value is None
    if hint is bool:
        return value, isinstance(value, bool)
    if hint is int:
        return value, isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value) if ok else None), ok
    if hint is str:
        return value, isinstance(value, str)
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return None, False
        items = [_convert(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], all(ok for _, ok in items)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return None, False
        items = {k: _convert(v, args[1] if args else Any, f"{path}.{k}") for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, all(ok for _, ok in items.values())
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return value, callable(value) and not isinstance(value, (str, type(None)))
    if inspect.isclass(hint) and issubclass(hint, ObjectKind):
        return value, hint.matches(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            return None, False
        checked, problems = check_schema(hint, value, f"{path}.")
        if problems:
            raise SchemaProblems(problems)
        return checked, True
    if inspect.isclass(hint):
        return value, isinstance(value, hint)
    raise TypeError(f"schema type {hint!r} at {path} is not supported")


def problems_message(group: str, problems: list[Problem], origin: Callable[[str], str] | None) -> str:
    """One line per problem, e.g. ``Bad value for group.key (from file:line): expected ..., got ...``.

    ``origin`` receives the key relative to ``group``.
    """
    lines = []
    for problem in problems[:12]:
        full = f"{group}.{problem.path}" if group else problem.path
        source = origin(problem.path) if origin else ""
        where = f" (from {source})" if source else ""
        if problem.message.startswith("unknown key"):
            hint = problem.message.removeprefix("unknown key").lstrip(". ")
            lines.append(f"Unknown key {full}{where}." + (f" {hint}" if hint else ""))
        elif problem.message == "required, but missing":
            lines.append(f"Missing key {full}: the recipe must set it.")
        else:
            end = "" if problem.message.endswith((".", "?")) else "."
            lines.append(f"Bad value for {full}{where}: {problem.message}{end}")
    if len(problems) > 12:
        lines.append(f"... and {len(problems) - 12} more.")
    if group == "training_hyperparams" and any(p.message.startswith("unknown key") for p in problems):
        lines.append("See recipes/training_hyperparams/default_train_params.yaml for every valid key.")
    return "\n".join(lines)


def _literal_strings(hint: Any) -> list[str]:
    """The string choices of every ``Literal`` inside ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return [a for a in args if isinstance(a, str)]
    return [choice for arg in args for choice in _literal_strings(arg)]


def _first_bad_item(value: Any, hint: Any) -> tuple[int, Any] | None:
    """For a list value: the first item that no list alternative of ``hint`` accepts."""
    if not isinstance(value, (list, tuple)):
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _first_bad_item(value, args[0])
    alternatives = args if origin in (typing.Union, types.UnionType) else (hint,)
    item_hints = [typing.get_args(a)[0] for a in alternatives
                  if typing.get_origin(a) in (list, collections.abc.Sequence) and typing.get_args(a)]
    for i, item in enumerate(value):
        if item_hints and not any(_convert(item, h, "")[1] for h in item_hints):
            return i, item
    return None


class SchemaProblems(Exception):
    """Raised from inside a nested schema so that its own key paths reach the report."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems)
        self.problems = problems


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return []


def describe(hint: Any, rule: Rule | None = None) -> str:
    """Words for a type (and its range): ``an integer >= 1``, ``null or a number > 0``..."""
    text = _describe(hint)
    limits = rule.range_text() if rule else ""
    return f"{text} {limits}" if limits else text


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, str)), None) or _describe(args[0])
    if hint is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(words))
        return f"null or {text}" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if hint is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (list, collections.abc.Sequence):
        inner = _describe(args[0]) if args else "values"
        return f"a list of {_plural(inner)}"
    if origin in (dict, collections.abc.Mapping):
        inner = _describe(args[1]) if args else "values"
        return "a mapping" if inner == "any value" else f"a mapping of names to {_plural(inner)}"
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return "a callable"
    if inspect.isclass(hint) and issubclass(hint, ObjectKind):
        return hint.text
    if dataclasses.is_dataclass(hint):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(hint))
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            word, _, rest = text[len(article):].partition(" ")
            return f"{word}s {rest}".strip()
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_HINTS: dict[type, dict[str, Any]] = {}


def schema_hints(schema: type) -> dict[str, Any]:
    """The resolved type hints of a schema dataclass (cached)."""
    if schema not in _HINTS:
        _HINTS[schema] = typing.get_type_hints(schema, include_extras=True)
    return _HINTS[schema]


def rule_of(schema: type, name: str) -> Rule:
    """The :class:`Rule` of one field."""
    return next(f.metadata.get("rule", Rule("")) for f in dataclasses.fields(schema) if f.name == name)


def default_of(f: dataclasses.Field) -> Any:
    """The default value of a schema field."""
    return f.default_factory() if f.default_factory is not MISSING else f.default
