"""Composing a recipe with Hydra: shortcuts, the recipe search path, where each key came from, readable errors.

A recipe is ``recipes/<name>.yaml`` whose ``defaults:`` list pulls one file from each group
(``training_hyperparams``, ``dataset_params``, ``arch_params``, ``checkpoint_params``). Everything here runs
before any model or data is built; a malformed file (YAML syntax, a tab, a list where a mapping belongs, a
recursive interpolation) is reported with its file, line and key instead of Hydra's traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from super_recipes.errors import RecipeError, unknown_name_message
from super_recipes.paths import recipes_dir

DEFAULT_RECIPE = "shapes_resnet"
GROUPS = ("training_hyperparams", "dataset_params", "arch_params", "checkpoint_params")

# Command-line shortcuts users know from other frameworks -> the nested keys they stand for.
SHORTCUTS: dict[str, tuple[str, ...]] = {
    "epochs": ("training_hyperparams.max_epochs",),
    "max_epochs": ("training_hyperparams.max_epochs",),
    "lr": ("training_hyperparams.initial_lr",),
    "batch_size": ("dataset_params.train_dataloader_params.batch_size",),
    "val_batch_size": ("dataset_params.val_dataloader_params.batch_size",),
    "num_workers": ("dataset_params.train_dataloader_params.num_workers",
                    "dataset_params.val_dataloader_params.num_workers"),
    "resume": ("training_hyperparams.resume",),
}

# Top-level keys a user may set on any recipe, whether or not its file lists them (Hydra's `++key=value`).
TOP_LEVEL_SETTABLE = ("architecture", "experiment_name", "ckpt_root_dir", "train_dataloader", "val_dataloader",
                      "num_gpus", "multi_gpu", "device", "imports")


@dataclass(frozen=True)
class Override:
    """One command-line override: what Hydra applies (``expanded``) and what the user typed (``typed``)."""

    expanded: str
    typed: str

    @property
    def key(self) -> str:
        return self.expanded.split("=", 1)[0].lstrip("+~")


def expand_shortcuts(overrides: Sequence[str]) -> list[str]:
    """``epochs=5`` -> ``training_hyperparams.max_epochs=5`` (and the other :data:`SHORTCUTS`);
    ``device=cpu`` -> ``++device=cpu`` so standard top-level keys can be set on recipes that omit them."""
    return [o.expanded for o in parse_overrides(overrides)]


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """The overrides as Hydra will apply them, each remembering the text the user typed."""
    parsed: list[Override] = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in SHORTCUTS:
            parsed += [Override(f"{target}={value}", override) for target in SHORTCUTS[key]]
        elif sep and key in TOP_LEVEL_SETTABLE:
            parsed.append(Override(f"++{override}", override))
        else:
            parsed.append(Override(override, override))
    return parsed


def available_recipes(config_dirs: Sequence[Path] = ()) -> list[str]:
    """Names of the top-level recipes in the shipped tree and in ``config_dirs``."""
    names = set()
    for folder in [*config_dirs, recipes_dir()]:
        names.update(p.stem for p in Path(folder).glob("*.yaml"))
    return sorted(names)


def check_recipe_exists(name: str, config_dirs: Sequence[Path] = ()) -> None:
    """Refuse an unknown ``--config-name`` with the closest recipe names."""
    stem = name.removesuffix(".yaml")
    if stem in available_recipes(config_dirs):
        return
    searched = ", ".join(str(p) for p in [*config_dirs, recipes_dir()])
    raise RecipeError(unknown_name_message("recipe", stem, available_recipes(config_dirs)) + f"\nSearched: {searched}")


@dataclass
class RecipeSource:
    """Where a composed recipe came from: used to say which file (and line) or override set a key."""

    name: str
    search_dirs: list[Path]
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)

    def origin(self, dotted_key: str) -> str:
        """The command-line override (the last one, which Hydra applied) or ``file:line`` that set the key."""
        for override in reversed(self.overrides):
            if override.key == dotted_key or dotted_key.startswith(override.key + ".") \
                    or override.key.startswith(dotted_key + "."):
                return f"command-line override '{override.typed}'"
        group, _, rest = dotted_key.partition(".")
        primary = self._find(f"{self.name}.yaml")
        found = _key_location(primary, dotted_key) if primary else ""
        if found:
            return found
        if group in self.choices and rest:
            for file in self._group_files(group, self.choices[group]):
                found = _key_location(file, rest)
                if found:
                    return found
        return ""

    def _find(self, relative: str) -> Path | None:
        return next((d / relative for d in self.search_dirs if (d / relative).is_file()), None)

    def _group_files(self, group: str, choice: str, depth: int = 0) -> list[Path]:
        file = self._find(f"{group}/{choice}.yaml")
        if file is None or depth > 5:
            return []
        files = [file]
        for parent in _defaults_of(file):  # a group file may extend another in its own group
            files += self._group_files(group, parent, depth + 1)
        return files


def with_origin(err: RecipeError, source: RecipeSource | None) -> RecipeError:
    """``err`` with the file or override that set its ``key`` appended (``err`` itself when unknown)."""
    origin = source.origin(err.key) if source is not None and err.key else ""
    if not origin or origin in str(err):
        return err
    return RecipeError(f"{err}\n(set by {origin})", key=err.key)


def _key_location(path: Path, dotted_key: str) -> str:
    """``path:line`` of ``dotted_key`` in a YAML file, or "" when the file does not set it."""
    import yaml

    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    for part in dotted_key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return ""
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            return ""
        key_node, node = match
    return f"{path}:{key_node.start_mark.line + 1}"


def _defaults_of(path: Path) -> list[str]:
    import yaml

    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    defaults = content.get("defaults", []) if isinstance(content, dict) else []
    return [d for d in defaults or [] if isinstance(d, str) and d != "_self_"]


def compose_recipe(name: str = DEFAULT_RECIPE, overrides: Sequence[str] = (),
                   config_dir: str | Path | None = None) -> tuple[Any, RecipeSource]:
    """Compose recipe ``name`` (shortcuts allowed in ``overrides``) -> (DictConfig, RecipeSource).

    This is what the command line does. Every composition problem is a :class:`RecipeError` naming the file,
    line and key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    config_dirs = [Path(config_dir).expanduser().resolve()] if config_dir else []
    for folder in config_dirs:
        if not folder.is_dir():
            raise RecipeError(f"--config-dir {folder} is not a folder.")
    check_recipe_exists(name, config_dirs)
    parsed = parse_overrides(overrides)
    hydra_overrides = [o.expanded for o in parsed]
    GlobalHydra.instance().clear()
    primary = config_dirs[0] if config_dirs else recipes_dir()
    if config_dirs:
        # The user's folder is primary; the shipped groups stay reachable through the search path.
        hydra_overrides.append(f"hydra.searchpath=[file://{recipes_dir()}]")
    with initialize_config_dir(config_dir=str(primary), version_base=None):
        try:
            cfg = compose(config_name=name, overrides=hydra_overrides, return_hydra_config=True)
        except Exception as err:
            raise RecipeError(composition_error_message(err, config_dirs, name, hydra_overrides)) from None
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    source = RecipeSource(name.removesuffix(".yaml"), [*config_dirs, recipes_dir()], choices, parsed)
    OmegaConf.set_struct(cfg, False)
    return cfg, source


def composition_error_message(err: BaseException, config_dirs: Sequence[Path] = (), name: str = "",
                              overrides: Sequence[str] = ()) -> str:
    """One screen for a failed composition: YAML errors with file/line/column, wrong shapes with their key."""
    import yaml

    cause = _find_in_chain(err, yaml.YAMLError)
    if cause is not None:
        return yaml_error_message(cause)
    # A group given as a list or a value (where a mapping belongs) makes Hydra fail in many ways, often while
    # applying an unrelated override: look for that first, it is the real cause.
    shape = _find_wrong_shape([*config_dirs, recipes_dir()], name, overrides)
    if shape:
        return shape
    return hydra_error_message(err, config_dirs)


def _find_in_chain(err: BaseException | None, kind: type) -> Any:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, kind):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def yaml_error_message(err: Any) -> str:
    """``file, line L, column C: problem`` for a YAML syntax error (a tab gets its own explanation)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a recipe file"
    lines = [f"Cannot read {where}: {problem}."]
    if "\\t" in str(problem) or "\t" in str(problem):
        lines.append("YAML indents with spaces only: replace the tab character on that line with spaces.")
    context = getattr(err, "context", None)
    if context and getattr(err, "context_mark", None) and err.context_mark is not mark:
        lines.append(f"({context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})")
    if mark is not None and mark.buffer is None:
        snippet = _line_of(mark.name, mark.line)
        if snippet is not None:
            lines.append(f"  {mark.line + 1} | {snippet}")
    return "\n".join(lines)


def _line_of(path: str, line: int) -> str | None:
    try:
        return Path(path).read_text().splitlines()[line].replace("\t", "<TAB>")
    except (OSError, IndexError):
        return None


def _find_wrong_shape(search_dirs: Sequence[Path], name: str, overrides: Sequence[str] = ()) -> str:
    """The first file of this recipe whose shape is wrong: the recipe is not a mapping, its ``defaults`` not a
    list, a group key holds a list or a value, or a group file it uses (by ``defaults`` or an override) does not
    hold a mapping. Only the files the composition reads are looked at."""
    import yaml

    primary = next((Path(d) / f"{name.removesuffix('.yaml')}.yaml" for d in search_dirs
                    if (Path(d) / f"{name.removesuffix('.yaml')}.yaml").is_file()), None)
    if primary is None:
        return ""
    root = _compose_quietly(primary)
    if root is None or not isinstance(root, yaml.MappingNode):
        return f"{primary}:1: a recipe must be a mapping of keys to values." if root is not None else ""
    chosen: dict[str, str] = {}
    for key_node, value in root.value:
        if key_node.value == "defaults":
            if not isinstance(value, yaml.SequenceNode):
                return (f"{primary}:{key_node.start_mark.line + 1}: 'defaults' must be a list such as "
                        f"[training_hyperparams: default_train_params, _self_], but it is {_node_kind(value)}.")
            for entry in value.value:
                if isinstance(entry, yaml.MappingNode) and len(entry.value) == 1:
                    group, option = entry.value[0]
                    chosen[str(group.value).lstrip("/")] = str(option.value)
        elif key_node.value in GROUPS and not isinstance(value, yaml.MappingNode) and not _is_null(value):
            return (f"{primary}:{key_node.start_mark.line + 1}: '{key_node.value}' must be a mapping of keys to "
                    f"values, but it is {_node_kind(value)}.")
    for override in overrides:
        group, sep, option = override.lstrip("+~").partition("=")
        if sep and group in GROUPS:
            chosen[group] = option
    for group, option in chosen.items():
        file = next((Path(d) / group / f"{option}.yaml" for d in search_dirs
                     if (Path(d) / group / f"{option}.yaml").is_file()), None)
        node = _compose_quietly(file) if file else None
        if node is not None and not isinstance(node, yaml.MappingNode):
            return (f"{file}:{node.start_mark.line + 1}: a {group} file must hold a mapping of keys to values, but "
                    f"it holds {_node_kind(node)}.")
    return ""


def _compose_quietly(path: Path) -> Any:
    import yaml

    try:
        return yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _is_null(node: Any) -> bool:
    return node.tag == "tag:yaml.org,2002:null"


def _node_kind(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {node.value!r}" if isinstance(node, yaml.ScalarNode) else "not a mapping"


def hydra_error_message(err: BaseException, search_dirs: Sequence[Path] = ()) -> str:
    """Hydra's message for a composition error, plus the closest group options when an option is unknown."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("\t", "Config search"))]
    missing = re.search(r"Could not find '([\w/]+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        options = sorted({p.stem for d in [*search_dirs, recipes_dir()] for p in (Path(d) / group).glob("*.yaml")})
        return f"{lines[0]}\n" + unknown_name_message(f"'{group}' option", option, options)
    return "\n".join(lines[:12]) or type(err).__name__


def resolve_recipe(cfg: Any) -> None:
    """Resolve every interpolation in place; a recursive or broken one names the keys involved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        if "Recursive interpolation" in message:
            cycle = interpolation_cycle(OmegaConf.to_container(cfg, resolve=False))
            if cycle:
                message += ": " + " -> ".join(cycle)
        key = getattr(err, "full_key", None)
        raise RecipeError(f"Cannot resolve the recipe{f' at key {key}' if key else ''}: {message}") from None


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def interpolation_cycle(tree: Any) -> list[str]:
    """A cycle of keys that refer to each other through ``${...}`` (``[a, b, a]``), or [] when there is none."""
    edges: dict[str, list[str]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif isinstance(node, str):
            edges[prefix[:-1]] = _REFERENCE.findall(node)

    walk(tree, "")

    def targets(key: str) -> list[str]:
        # A reference to a mapping depends on every key inside it.
        return [t for ref in edges.get(key, []) for t in edges if t == ref or t.startswith(ref + ".")]

    for start in edges:
        path, stack = [start], [(start, iter(targets(start)))]
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                stack.pop()
                path.pop()
            elif nxt == start:
                return [*path, start]
            elif nxt not in path and len(path) < 50:
                path.append(nxt)
                stack.append((nxt, iter(targets(nxt))))
    return []


def import_user_modules(cfg: Any, source: RecipeSource | None = None) -> None:
    """``imports: [package.module, ...]``: import user code that registers datasets, models, etc."""
    imports = cfg.get("imports") or []
    if isinstance(imports, str):
        imports = [imports]
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # user modules next to where the command runs, as `python -m` does
    for i, module in enumerate(imports):
        try:
            importlib.import_module(str(module))
        except ImportError as err:
            where = source.origin("imports") if source else ""
            raise RecipeError(
                f"imports[{i}]: cannot import '{module}'{f' (from {where})' if where else ''}: {err}\n"
                "Each entry must be an importable module path (package.module), importable from the current "
                "folder or an installed package."
            ) from None
