"""String-keyed registries that turn recipe names into models, losses, metrics, callbacks, data and schedules.

The object-spec grammar, the same for every key and reader (:func:`build`, :func:`build_list`,
:func:`resolve_callable`):

* a string ``Name`` (registered), or a dotted path ``package.module.Name``;
* a one-key mapping ``{Name: {kwargs}}``;
* a Hydra ``_target_`` node (``{_target_: package.module.Class, arg: 1}``);
* a list of those, where a key takes several;
* from the Python API, the object itself (used as is) or a class (instantiated).

Built-in entries live in the modules listed per registry and are imported on first lookup, so that importing
``super_recipes`` stays cheap. Task packages (``super_recipes/<task>/``) declare their own modules in a
``registry_modules.py`` (``REGISTRY_MODULES = {"models": [...], ...}``); those are imported only when a name is
not found among the built-ins, so a classification run never imports the detection package. Some registries
also fall back to a library namespace (``torch.nn`` losses, ``torch.optim`` optimizers, ``torchmetrics``
metrics, ``torchvision.transforms.v2`` transforms).

``python -m super_recipes.registry [KIND]`` lists the registered names.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from super_recipes.errors import RecipeError, unknown_name_message

Fallback = Callable[[], Mapping[str, Any]]


class Registry:
    """A named table of objects (classes or factory functions)."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = (), fallback: Fallback | None = None,
                 key: str | None = None, namespaces: Mapping[str, str] | None = None):
        self.kind = kind
        # ``{prefix: "module:function"}``: names ``prefix<rest>`` resolve to ``function(rest)`` (``timm/<name>``),
        # for libraries whose own name space is too large to register name by name.
        self._namespaces = dict(namespaces or {})
        # The name task packages use for this registry in their REGISTRY_MODULES (``models``, ``losses``...).
        self.key = key or f"{kind.replace(' ', '_')}s"
        self._entries: dict[str, Any] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._builtins_loaded = False
        self._tasks_loaded: set[str] = set()
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

    def _load_on_demand(self, until: str | None = None) -> None:
        """Import the task packages' modules for this registry, task by task; with ``until``, stop at the first
        task that registers that name (looking up a segmentation model does not import the detection models)."""
        for task, modules in task_registry_modules().items():
            if task in self._tasks_loaded:
                continue
            self._tasks_loaded.add(task)
            for module in modules.get(self.key, ()):
                importlib.import_module(module)
            if until is not None and until in self._entries:
                return

    @property
    def on_demand_modules(self) -> tuple[str, ...]:
        """The modules task packages declare for this registry (imported when a name is not a built-in)."""
        return tuple(module for modules in task_registry_modules().values() for module in modules.get(self.key, ()))

    def _fallbacks(self) -> Mapping[str, Any]:
        if self._fallback is None:
            return {}
        if self._fallback_entries is None:
            self._fallback_entries = self._fallback()
        return self._fallback_entries

    def __contains__(self, name: str) -> bool:
        if any(name.startswith(prefix) for prefix in self._namespaces):
            try:
                self.get(name)
            except RecipeError:
                return False
            return True
        self._load_builtins()
        if name in self._entries or name in self._fallbacks():
            return True
        self._load_on_demand(until=name)
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
        """The object registered as ``name`` (or at the dotted path ``name``); a RecipeError with the closest
        names otherwise."""
        if not isinstance(name, str):
            raise RecipeError(f"Expected a {self.kind} name (a string) {_at(where)}but got {name!r}.")
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        for prefix, resolver in self._namespaces.items():
            if name.startswith(prefix):
                module, function = resolver.split(":")
                return getattr(importlib.import_module(module), function)(name[len(prefix):], where)
        # Library names (torch.nn losses, torch.optim...) resolve without importing the on-demand modules.
        fallback = self._fallbacks()
        if name in fallback:
            return fallback[name]
        self._load_on_demand(until=name)
        if name in self._entries:
            return self._entries[name]
        if "." in name.strip("."):
            return import_dotted(name, where)
        raise RecipeError(unknown_name_message(self.kind, name, self.names(), where))


def task_registry_modules() -> dict[str, dict[str, list[str]]]:
    """``{task package: REGISTRY_MODULES}`` for every ``super_recipes/<task>/registry_modules.py`` (cached).

    Finding them reads the folder listing only; the declaration module is tiny and imports nothing heavy.
    """
    global _TASK_MODULES
    if _TASK_MODULES is None:
        package_dir = Path(__file__).resolve().parent
        found = {}
        for declaration in sorted(package_dir.glob("*/registry_modules.py")):
            module = importlib.import_module(f"super_recipes.{declaration.parent.name}.registry_modules")
            found[declaration.parent.name] = dict(module.REGISTRY_MODULES)
        _TASK_MODULES = found
    return _TASK_MODULES


_TASK_MODULES: dict[str, dict[str, list[str]]] | None = None


def _same_object(a: Any, b: Any) -> bool:
    # A module imported twice (``python -m pkg.mod`` plus ``import pkg.mod``) re-creates its classes.
    return a is b or (_qualname(a) == _qualname(b))


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _at(where: str) -> str:
    return f"at {where} " if where else ""


def _public_classes(module_names: str | tuple[str, ...], base: str | None = None, suffix: str = "") -> Fallback:
    """Fallback that exposes the public classes of library modules (optionally subclasses of ``base``)."""

    def load() -> dict[str, Any]:
        base_cls = import_dotted(base) if base else None
        out = {}
        for module_name in (module_names,) if isinstance(module_names, str) else module_names:
            module = importlib.import_module(module_name)
            for name in dir(module):
                obj = getattr(module, name)
                if name.startswith("_") or not inspect.isclass(obj) or not name.endswith(suffix) or name in out:
                    continue
                if base_cls is None or (issubclass(obj, base_cls) and obj is not base_cls):
                    out[name] = obj
        return out

    return load


def import_dotted(path: str, where: str = "") -> Any:
    """The object at ``package.module.attribute``; a RecipeError naming ``where`` when it cannot be imported."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"Cannot import '{path}' {_at(where)}: {err}") from None
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        from super_recipes.errors import did_you_mean

        raise RecipeError(f"Cannot import '{path}' {_at(where)}: module '{module_name}' has no attribute '{attr}'. "
                          f"{did_you_mean(attr, names)}".rstrip())
    return getattr(module, attr)


MODELS = Registry("model", ["super_recipes.models.classification", "super_recipes.models.resnets",
                            "super_recipes.models.mobilenets", "super_recipes.models.regnet",
                            "super_recipes.models.repvgg", "super_recipes.models.darknet",
                            "super_recipes.models.imagenet21k"],
                  namespaces={"timm/": "super_recipes.models.timm_models:timm_factory"})
LOSSES = Registry("loss", ["super_recipes.losses"], _public_classes("torch.nn", "torch.nn.Module", "Loss"),
                  key="losses")
METRICS = Registry("metric", ["super_recipes.metrics"], _public_classes(
    ("torchmetrics", "torchmetrics.classification", "torchmetrics.regression", "torchmetrics.aggregation"),
    "torchmetrics.Metric"))
CALLBACKS = Registry("callback", ["super_recipes.callbacks"])
DATASETS = Registry("dataset", ["super_recipes.data.shapes", "super_recipes.data.torchvision_datasets"])
DATALOADERS = Registry("dataloader", ["super_recipes.data.dataloaders"])
TRANSFORMS = Registry("transform", ["super_recipes.data.transforms", "super_recipes.data.mixing"],
                      _public_classes("torchvision.transforms.v2", "torchvision.transforms.v2.Transform"))
OPTIMIZERS = Registry("optimizer", [], _public_classes("torch.optim", "torch.optim.Optimizer"))
LR_SCHEDULES = Registry("LR schedule", ["super_recipes.schedules"], key="lr_schedules")
# ``lr_schedule_function`` names: plain functions f(initial_lr, epoch, iter, max_epoch, iters_per_epoch) -> lr,
# kept apart from LR_SCHEDULES (whose entries build a schedule callback from training_hyperparams).
LR_FUNCTIONS = Registry("LR schedule function", ["super_recipes.schedules"], key="lr_functions")
COLLATE_FUNCTIONS = Registry("collate function", ["super_recipes.data.collate", "super_recipes.data.mixing"])
# Callables applied to model outputs or batches (``post_prediction_callback``, ``pre_prediction_callback``).
PROCESSING = Registry("processing callable", key="processing")
# Backbones, necks and heads a ``CustomizableDetector`` assembles from ``arch_params`` (detection task).
DETECTION_MODULES = Registry("detection module", key="detection_modules")

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
    "processing": PROCESSING,
    "detection_modules": DETECTION_MODULES,
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
register_processing = PROCESSING.register
register_detection_module = DETECTION_MODULES.register


def split_spec(spec: Any, registry: Registry, where: str = "") -> tuple[Any, dict[str, Any]]:
    """Split one recipe spec into (factory, kwargs). See the module docstring for the accepted forms."""
    spec = to_plain(spec)
    if isinstance(spec, str):
        return registry.get(spec, where), {}
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            kwargs = {k: v for k, v in spec.items() if k != "_target_"}
            return import_dotted(str(spec["_target_"]), where or "_target_"), kwargs
        if len(spec) == 1:
            (name, kwargs), = spec.items()
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, Mapping):
                raise RecipeError(
                    f"Arguments of {registry.kind} '{name}' {_at(where)}must be a mapping, got {kwargs!r}."
                )
            factory = name if inspect.isclass(name) else registry.get(name, where)
            return factory, dict(kwargs)
    raise RecipeError(
        f"Cannot read a {registry.kind} {_at(where)}from {spec!r}: expected a name, a one-key mapping "
        f"{{Name: {{kwargs}}}}, a list of those, or a node with _target_."
    )


def is_spec(value: Any) -> bool:
    """Whether ``value`` is a recipe spec (a name or a mapping) rather than a built object or a class."""
    return isinstance(value, (str, Mapping)) or type(value).__module__.startswith("omegaconf")


def build(registry: Registry, spec: Any, where: str = "", **extra_kwargs: Any) -> Any:
    """The object a spec describes: an object as is, a class instantiated, a recipe spec built (its factory
    called with ``extra_kwargs`` filling in unspecified arguments)."""
    if inspect.isclass(spec):
        return call_with_kwargs(spec, extra_kwargs, f"{registry.kind} {spec.__name__}", where)
    if not is_spec(spec):
        return spec
    factory, kwargs = split_spec(spec, registry, where)
    return call_with_kwargs(factory, {**extra_kwargs, **kwargs}, f"{registry.kind} {_name_of(factory)}", where)


def resolve_callable(registry: Registry, spec: Any, where: str = "") -> Callable | None:
    """A callable from a spec (``None`` stays ``None``): a name or path of a function is that function, of a
    class an instance; mappings are built and objects used as they are."""
    if isinstance(spec, str):
        target = registry.get(spec, where)
        return call_with_kwargs(target, {}, f"{registry.kind} {_name_of(target)}", where) \
            if inspect.isclass(target) else target
    if spec is None:
        return None
    built = build(registry, spec, where)
    if not callable(built):
        raise RecipeError(f"{where or registry.kind}: expected a callable, got {built!r}.")
    return built


def build_list(registry: Registry, specs: Any, where: str = "") -> list[Any]:
    """:func:`build` each entry; ``None`` gives an empty list and a single spec a one-item list."""
    specs = to_plain(specs)
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        specs = [specs]
    return [build(registry, spec, f"{where}[{i}]" if where else "") for i, spec in enumerate(specs)]


def call_with_kwargs(factory: Callable, kwargs: dict[str, Any], what: str, where: str = "") -> Any:
    """Call ``factory(**kwargs)``: an unknown or missing argument, or a value the factory itself refuses
    (``TypeError``/``ValueError`` raised while building), becomes a RecipeError naming ``what`` and ``where``."""
    check_arguments(factory, kwargs, what, where)
    try:
        return factory(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items() if k != "params")
        raise RecipeError(f"Cannot build {what}{f' at {where}' if where else ''} ({shown}): {err}",
                          key=where or None) from err


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_arguments(factory: Callable, kwargs: dict[str, Any], what: str, where: str = "") -> None:
    """Refuse unknown or missing keyword arguments of ``factory`` without calling it."""
    problem = _argument_problem(factory, kwargs)
    if problem:
        raise RecipeError(f"Bad arguments for {what}{f' at {where}' if where else ''}: {problem}", key=where or None)


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
    if missing:
        return f"missing required argument(s) {missing}"
    wrong = [_type_problem(name, params[name].default, value) for name, value in kwargs.items()]
    return "; ".join(w for w in wrong if w)


def _type_problem(name: str, default: Any, value: Any) -> str:
    """A string where the default is a number or a flag is a mistake: say so before the factory trips on it."""
    if isinstance(default, bool):
        return "" if isinstance(value, (bool, int)) and not isinstance(value, str) else (
            f"{name} expects true or false (its default is {default}), got {value!r}")
    if isinstance(default, (int, float)) and isinstance(value, (str, bool)):
        return f"{name} expects a number (its default is {default}), got {value!r}"
    return ""


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
