"""String-keyed registries that turn recipe names into models, losses, metrics, callbacks, data and schedules.

A recipe value that names an object may be:

* a string ``Name``;
* a one-key mapping ``{Name: {kwargs}}``;
* a list of those;
* a Hydra ``_target_`` node (``{_target_: package.module.Class, arg: 1}``).

Built-in entries live in the modules listed per registry and are imported on first lookup, so that importing
``super_recipes`` stays cheap. Some registries also fall back to a library namespace (``torch.nn`` losses,
``torch.optim`` optimizers, ``torchmetrics`` metrics, ``torchvision.transforms.v2`` transforms).

``python -m super_recipes.registry [KIND]`` lists the registered names.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from super_recipes.errors import RecipeError, unknown_name_message

Fallback = Callable[[], Mapping[str, Any]]


class Registry:
    """A named table of objects (classes or factory functions)."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = (), fallback: Fallback | None = None,
                 on_demand_modules: Iterable[str] = ()):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._builtins_loaded = False
        # Heavier built-ins (detection) are imported only when a name is not found among the others.
        self._on_demand_modules = tuple(on_demand_modules)
        self._on_demand_loaded = False
        self._fallback = fallback
        self._fallback_entries: Mapping[str, Any] | None = None

    def register(self, name: str | Callable | None = None) -> Callable:
        """Decorator: ``@register_model`` or ``@register_model("my_name")``."""
        if callable(name):  # used bare: @register_model
            return self._add(name.__name__, name)

        def decorator(obj: Any) -> Any:
            return self._add(name or obj.__name__, obj)

        return decorator

    def _add(self, name: str, obj: Any) -> Any:
        taken = self._entries.get(name)
        if taken is not None and not _same_object(taken, obj):
            raise RecipeError(
                f"Cannot register {self.kind} '{name}' as {_qualname(obj)}: "
                f"the name is already taken by {_qualname(taken)}."
            )
        self._entries[name] = obj
        return obj

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def _load_on_demand(self) -> None:
        if not self._on_demand_loaded:
            self._on_demand_loaded = True
            for module in self._on_demand_modules:
                importlib.import_module(module)

    @property
    def on_demand_modules(self) -> tuple[str, ...]:
        return self._on_demand_modules

    def _fallbacks(self) -> Mapping[str, Any]:
        if self._fallback is None:
            return {}
        if self._fallback_entries is None:
            self._fallback_entries = self._fallback()
        return self._fallback_entries

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        if name in self._entries or name in self._fallbacks():
            return True
        self._load_on_demand()
        return name in self._entries

    def names(self, include_fallback: bool = True) -> list[str]:
        """All names this registry resolves, sorted."""
        self._load_builtins()
        self._load_on_demand()
        names = set(self._entries)
        if include_fallback:
            names.update(self._fallbacks())
        return sorted(names)

    def get(self, name: str, where: str = "") -> Any:
        """The registered object for ``name``; a :class:`RecipeError` with the closest names otherwise."""
        if not isinstance(name, str):
            raise RecipeError(f"Expected a {self.kind} name (a string) {_at(where)}but got {name!r}.")
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        # Library names (torch.nn losses, torch.optim...) resolve without importing the on-demand modules.
        fallback = self._fallbacks()
        if name in fallback:
            return fallback[name]
        self._load_on_demand()
        if name in self._entries:
            return self._entries[name]
        raise RecipeError(unknown_name_message(self.kind, name, self.names(), where))


def _same_object(a: Any, b: Any) -> bool:
    # A module imported twice (``python -m pkg.mod`` plus ``import pkg.mod``) re-creates its classes.
    return a is b or (_qualname(a) == _qualname(b))


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _at(where: str) -> str:
    return f"at {where} " if where else ""


def _public_classes(module_name: str, base: str | None = None, suffix: str = "") -> Fallback:
    """Fallback that exposes the public classes of a library module (optionally subclasses of ``base``)."""

    def load() -> dict[str, Any]:
        module = importlib.import_module(module_name)
        base_cls = _import_dotted(base) if base else None
        out = {}
        for name in dir(module):
            obj = getattr(module, name)
            if name.startswith("_") or not inspect.isclass(obj) or not name.endswith(suffix):
                continue
            if base_cls is None or (issubclass(obj, base_cls) and obj is not base_cls):
                out[name] = obj
        return out

    return load


def _import_dotted(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


MODELS = Registry("model", ["super_recipes.models.classification"],
                  on_demand_modules=["super_recipes.detection.yolox.model"])
LOSSES = Registry("loss", ["super_recipes.losses"], _public_classes("torch.nn", "torch.nn.Module", "Loss"),
                  on_demand_modules=["super_recipes.detection.yolox.loss"])
METRICS = Registry("metric", ["super_recipes.metrics"], _public_classes("torchmetrics", "torchmetrics.Metric"),
                   on_demand_modules=["super_recipes.detection.metrics"])
CALLBACKS = Registry("callback", ["super_recipes.callbacks"],
                     on_demand_modules=["super_recipes.detection.coco_evaluation",
                                        "super_recipes.detection.visualization",
                                        "super_recipes.detection.yolox.stage_switch",
                                        "super_recipes.detection.yolox.postprocess"])
DATASETS = Registry("dataset", ["super_recipes.data.shapes", "super_recipes.data.torchvision_datasets"],
                    on_demand_modules=["super_recipes.detection.datasets"])
DATALOADERS = Registry("dataloader", ["super_recipes.data.dataloaders"],
                       on_demand_modules=["super_recipes.detection.dataloaders"])
TRANSFORMS = Registry(
    "transform",
    ["super_recipes.data.transforms"],
    _public_classes("torchvision.transforms.v2", "torchvision.transforms.v2.Transform"),
    on_demand_modules=["super_recipes.detection.transforms"],
)
OPTIMIZERS = Registry("optimizer", [], _public_classes("torch.optim", "torch.optim.Optimizer"))
LR_SCHEDULES = Registry("LR schedule", ["super_recipes.schedules"])
# ``lr_schedule_function`` names: plain functions f(initial_lr, epoch, iter, max_epoch, iters_per_epoch) -> lr,
# kept apart from LR_SCHEDULES (whose entries build a schedule callback from training_hyperparams).
LR_FUNCTIONS = Registry("LR schedule function", ["super_recipes.schedules"])
COLLATE_FUNCTIONS = Registry("collate function", ["super_recipes.data.collate"],
                             on_demand_modules=["super_recipes.detection.collate"])

REGISTRIES: dict[str, Registry] = {
    "models": MODELS,
    "losses": LOSSES,
    "metrics": METRICS,
    "callbacks": CALLBACKS,
    "datasets": DATASETS,
    "dataloaders": DATALOADERS,
    "transforms": TRANSFORMS,
    "optimizers": OPTIMIZERS,
    "lr_schedules": LR_SCHEDULES,
    "lr_functions": LR_FUNCTIONS,
    "collate_functions": COLLATE_FUNCTIONS,
}

register_model = MODELS.register
register_loss = LOSSES.register
register_metric = METRICS.register
register_callback = CALLBACKS.register
register_dataset = DATASETS.register
register_dataloader = DATALOADERS.register
register_transform = TRANSFORMS.register
register_optimizer = OPTIMIZERS.register
register_lr_schedule = LR_SCHEDULES.register
register_lr_function = LR_FUNCTIONS.register
register_collate_function = COLLATE_FUNCTIONS.register


def split_spec(spec: Any, registry: Registry, where: str = "") -> tuple[Any, dict[str, Any]]:
    """Split one object spec into (factory, kwargs). See the module docstring for the accepted forms."""
    spec = to_plain(spec)
    if isinstance(spec, str):
        return registry.get(spec, where), {}
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            kwargs = {k: v for k, v in spec.items() if k != "_target_"}
            try:
                return _import_dotted(spec["_target_"]), kwargs
            except (ImportError, AttributeError, ValueError) as err:
                raise RecipeError(f"Cannot import _target_ '{spec['_target_']}' {_at(where)}: {err}") from None
        if len(spec) == 1:
            (name, kwargs), = spec.items()
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, Mapping):
                raise RecipeError(
                    f"Arguments of {registry.kind} '{name}' {_at(where)}must be a mapping, got {kwargs!r}."
                )
            return registry.get(name, where), dict(kwargs)
    raise RecipeError(
        f"Cannot read a {registry.kind} {_at(where)}from {spec!r}: expected a name, a one-key mapping "
        f"{{Name: {{kwargs}}}}, a list of those, or a node with _target_."
    )


def build(registry: Registry, spec: Any, where: str = "", **extra_kwargs: Any) -> Any:
    """Instantiate one object spec (see the module docstring). ``extra_kwargs`` fill in unspecified args."""
    factory, kwargs = split_spec(spec, registry, where)
    return call_with_kwargs(factory, {**extra_kwargs, **kwargs}, f"{registry.kind} {_name_of(factory)}", where)


def build_list(registry: Registry, specs: Any, where: str = "") -> list[Any]:
    """Instantiate a list of object specs; ``None`` gives an empty list and a single spec a one-item list."""
    specs = to_plain(specs)
    if specs is None:
        return []
    if not isinstance(specs, list):
        specs = [specs]
    return [build(registry, spec, f"{where}[{i}]" if where else "") for i, spec in enumerate(specs)]


def call_with_kwargs(factory: Callable, kwargs: dict[str, Any], what: str, where: str = "") -> Any:
    """Call ``factory(**kwargs)``, turning an unknown or missing argument into a RecipeError naming it."""
    check_arguments(factory, kwargs, what, where)
    return factory(**kwargs)


def check_arguments(factory: Callable, kwargs: dict[str, Any], what: str, where: str = "") -> None:
    """Refuse unknown or missing keyword arguments of ``factory`` without calling it."""
    problem = _argument_problem(factory, kwargs)
    if problem:
        raise RecipeError(f"Bad arguments for {what}{f' at {where}' if where else ''}: {problem}")


def _argument_problem(factory: Callable, kwargs: dict[str, Any]) -> str:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return ""
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return ""
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        from super_recipes.errors import did_you_mean

        hints = " ".join(dict.fromkeys(did_you_mean(k, accepted) for k in unknown)).strip()
        return f"unexpected argument(s) {unknown}. {hints} Accepted: {accepted}".replace("  ", " ")
    missing = [
        n for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs
    ]
    return f"missing required argument(s) {missing}" if missing else ""


def _name_of(obj: Any) -> str:
    return getattr(obj, "__name__", type(obj).__name__)


def to_plain(value: Any) -> Any:
    """A plain Python value from an OmegaConf node (resolved); anything else unchanged."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def _main(argv: list[str]) -> None:
    # Run as ``python -m``, this file is ``__main__``: the registrations went to the importable module's tables.
    from super_recipes.registry import REGISTRIES

    kinds = argv or list(REGISTRIES)
    for kind in kinds:
        registry = REGISTRIES.get(kind) or next((r for r in REGISTRIES.values() if r.kind == kind), None)
        if registry is None:
            raise SystemExit(unknown_name_message("registry", kind, REGISTRIES))
        print(f"{kind}: {', '.join(registry.names())}\n")


if __name__ == "__main__":
    _main(sys.argv[1:])
