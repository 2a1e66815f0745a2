"""Command line: ``python -m super_recipes.train_from_recipe --config-name=NAME [overrides...]``.

With no ``--config-name`` it runs the built-in offline recipe ``shapes_resnet``. Overrides use Hydra's grammar
(``training_hyperparams.max_epochs=3``, ``dataset_params=cifar10_dataset_params``) plus the shortcuts in
:data:`super_recipes.config.compose.SHORTCUTS` (``epochs=``, ``lr=``, ``batch_size=``...), in any order with
the flags. ``--config-dir DIR`` adds a recipe folder; ``--cfg job [--resolve]`` prints the composed recipe.
The recipe is composed with Hydra's compose API, so every mistake is reported in one screen; Hydra's own
``--info``, ``--help``, ``--hydra-help``, ``--cfg hydra|all`` and ``--multirun`` are handed to Hydra's main.
Outputs go to ``<ckpt_root_dir>/<experiment_name>/`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from super_recipes.config.compose import DEFAULT_RECIPE, RecipeSource, check_recipe_exists, expand_shortcuts
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.paths import recipes_dir

RECIPE_FILE_NAME = "recipe.yaml"
_USER_ARGS: list[str] = []  # the command line as typed, for the resume hint after an interruption

# Flags with a value, and flags without one.
VALUE_FLAGS = {"--config-name": "config_name", "-cn": "config_name", "--config-dir": "config_dir",
               "-cd": "config_dir", "--cfg": "cfg", "-c": "cfg", "--package": "package", "-p": "package"}
SWITCHES = {"--resolve": "resolve"}
# Hydra features we do not reimplement: the command line goes to Hydra's main as it is.
HYDRA_FLAGS = ("--info", "-i", "--help", "-h", "--hydra-help", "--version", "--multirun", "-m", "--run", "-r",
               "--shell-completion", "-sc", "--config-path", "-cp", "--experimental-rerun")
CFG_CHOICES = ("job", "hydra", "all")

# Keep Hydra from creating outputs/DATE/TIME folders, .hydra copies and its own log files: every output of a run
# belongs in <ckpt_root_dir>/<experiment_name>/.
HYDRA_QUIET_OVERRIDES = {
    "hydra.run.dir": "hydra.run.dir=.",
    "hydra.output_subdir": "hydra.output_subdir=null",
    "hydra/job_logging": "hydra/job_logging=none",
    "hydra/hydra_logging": "hydra/hydra_logging=none",
}


@dataclass
class CommandLine:
    """The parsed command line: options, overrides (as typed), and whether Hydra's main must handle it."""

    config_name: str = DEFAULT_RECIPE
    config_dir: str | None = None
    cfg: str | None = None
    package: str | None = None
    resolve: bool = False
    overrides: list[str] = field(default_factory=list)
    hydra_flags: list[str] = field(default_factory=list)

    @property
    def for_hydra(self) -> bool:
        return bool(self.hydra_flags) or self.cfg in ("hydra", "all")


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Flags and overrides in any order (``epochs=2 --cfg job`` works as well as ``--cfg job epochs=2``)."""
    line = CommandLine()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, has_value, value = arg.partition("=")
        if flag in VALUE_FLAGS and arg.startswith("-"):
            if not has_value:
                if i + 1 >= len(args):
                    raise RecipeError(f"{flag} needs a value.")
                i, value = i + 1, args[i + 1]
            setattr(line, VALUE_FLAGS[flag], value)
        elif arg in SWITCHES:
            setattr(line, SWITCHES[arg], True)
        elif flag in HYDRA_FLAGS:
            line.hydra_flags.append(arg)
            if flag in ("--info", "-i", "--config-path", "-cp", "--experimental-rerun") and not has_value \
                    and i + 1 < len(args) and "=" not in args[i + 1] and not args[i + 1].startswith("-"):
                i += 1
                line.hydra_flags.append(args[i])
        elif arg.startswith("-"):
            known = [*VALUE_FLAGS, *SWITCHES, *HYDRA_FLAGS]
            raise RecipeError(f"Unknown option '{arg}'. {did_you_mean(flag, known) or 'Options: ' + ', '.join(known)}")
        else:
            line.overrides.append(arg)
        i += 1
    if line.cfg is not None and line.cfg not in CFG_CHOICES:
        raise RecipeError(f"--cfg must be one of {', '.join(CFG_CHOICES)}, got '{line.cfg}'.")
    line.config_name = line.config_name.removesuffix(".yaml")
    return line


def run_recipe(cfg: Any, source: RecipeSource | None = None) -> dict[str, float]:
    """Check a composed recipe, build everything it names, and train. Returns the last epoch's record.

    Order: imports, interpolations, top-level keys, ``training_hyperparams`` (schema), then the objects it
    names are built (loss, metrics, callbacks, schedule; optimizer dry-run), the model and loader names and
    the devices are checked: all before any model or data is built.
    """
    from super_recipes.config.compose import import_user_modules, resolve_recipe, with_origin
    from super_recipes.config.instantiate import instantiate_training, with_components
    from super_recipes.config.top_level import check_top_level
    from super_recipes.config.training_params import parse_training_params

    try:
        import_user_modules(cfg, source)
        resolve_recipe(cfg)
        check_top_level(cfg, source.origin if source else None)
        params = parse_training_params(cfg.training_hyperparams, origin=(
            lambda key: source.origin(f"training_hyperparams.{key}")) if source else None)
        components = instantiate_training(params)
        _check_names(cfg)
        processes = _requested_processes(cfg)
        from super_recipes.callbacks.loggers import configure_console_logging
        from super_recipes.engine.distributed import launched_by_torchrun

        # Weight-loading reports print before training starts; ranks other than 0 stay quiet.
        configure_console_logging(silent=params.silent_mode, errors_only=os.environ.get("RANK", "0") != "0")
        if processes > 1 and not launched_by_torchrun():
            return _launch_distributed(cfg, processes)
        return _train(cfg, with_components(params, components))
    except RecipeError as err:
        raise with_origin(err, source) from err


def _train(cfg: Any, params: Any) -> dict[str, float]:
    from super_recipes import dataloaders, models
    from super_recipes.engine.distributed import launched_by_torchrun, leave_process_group
    from super_recipes.engine.reproducibility import seed_everything
    from super_recipes.engine.trainer import Trainer
    from super_recipes.models.weights import load_initial_weights

    seed_everything(params.seed, params.deterministic)  # before the model is built: its init is seeded
    model = models.get(cfg.architecture, arch_params=cfg.get("arch_params") or {})
    load_initial_weights(model, cfg.get("checkpoint_params") or {}, architecture=cfg.architecture)
    data = cfg.get("dataset_params") or {}
    train_loader = dataloaders.get(
        cfg.get("train_dataloader"), dataset_params=data.get("train_dataset_params"),
        dataloader_params=data.get("train_dataloader_params"), where="dataset_params.train_dataset_params",
    )
    valid_loader = None
    if cfg.get("val_dataloader") or (data.get("val_dataset_params") or {}).get("dataset"):
        valid_loader = dataloaders.get(
            cfg.get("val_dataloader"), dataset_params=data.get("val_dataset_params"),
            dataloader_params=data.get("val_dataloader_params"), where="dataset_params.val_dataset_params",
        )
    trainer = Trainer(cfg.get("experiment_name") or cfg.architecture, cfg.get("ckpt_root_dir"),
                      device=cfg.get("device"), recipe=cfg)
    if not launched_by_torchrun():
        return trainer.train(model=model, training_params=params, train_loader=train_loader,
                             valid_loader=valid_loader)
    success = False
    try:
        record = trainer.train(model=model, training_params=params, train_loader=train_loader,
                               valid_loader=valid_loader)
        success = True
        return record
    finally:
        leave_process_group(success)


def _check_names(cfg: Any) -> None:
    """The model and dataloader names, and the model's arguments, before anything heavy is built."""
    from super_recipes.registry import DATALOADERS, MODELS, check_arguments, to_plain

    arch_params = to_plain(cfg.get("arch_params")) or {}
    check_arguments(MODELS.get(cfg.architecture, "architecture"), arch_params, f"model '{cfg.architecture}'",
                    "arch_params")
    for key in ("train_dataloader", "val_dataloader"):
        if cfg.get(key):
            DATALOADERS.get(cfg[key], key)


def _requested_processes(cfg: Any) -> int:
    """``num_gpus`` / ``multi_gpu`` / ``device``: how many processes to launch here (1: no DDP)."""
    from super_recipes.config.top_level import normalize_multi_gpu
    from super_recipes.engine.distributed import requested_processes

    return requested_processes({**cfg, "multi_gpu": normalize_multi_gpu(cfg.get("multi_gpu", "Off"))})


def _launch_distributed(cfg: Any, processes: int) -> dict[str, float]:
    """Resolve the experiment folder once, write the resolved recipe there, and run it as ``processes`` workers."""
    from omegaconf import OmegaConf

    from super_recipes.engine.distributed import launch_workers

    folder = (Path(cfg.get("ckpt_root_dir") or "checkpoints") / (cfg.get("experiment_name") or cfg.architecture))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_FILE_NAME).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    status = launch_workers(processes, str(folder.resolve()), Path(RECIPE_FILE_NAME).stem)
    if status:
        raise SystemExit(status)
    return {}


def _print_job_config(line: CommandLine) -> None:
    from omegaconf import OmegaConf

    from super_recipes.config.compose import compose_recipe

    cfg, _ = compose_recipe(line.config_name, line.overrides, line.config_dir)
    if line.package:
        for part in line.package.split("."):
            if part not in cfg:
                raise RecipeError(f"--package {line.package}: the recipe has no key '{part}'. "
                                  f"{did_you_mean(part, [str(k) for k in cfg])}".rstrip())
            cfg = cfg[part]
    print(OmegaConf.to_yaml(cfg, resolve=line.resolve) if OmegaConf.is_config(cfg) else cfg)


def _run_hydra_main(line: CommandLine) -> None:
    """Hand the command line to Hydra's main (``--info``, ``--help``, ``--multirun``, ``--cfg hydra``...)."""
    import hydra

    argv = [f"--config-name={line.config_name}"]
    if line.config_dir:
        argv += ["--config-dir", line.config_dir]
    if line.cfg:
        argv += ["--cfg", line.cfg]
    if line.package:
        argv += ["--package", line.package]
    if line.resolve:
        argv.append("--resolve")
    overrides = expand_shortcuts(line.overrides)
    if not any(flag in line.hydra_flags for flag in ("--info", "-i", "--help", "-h", "--hydra-help")):
        present = {arg.split("=", 1)[0].lstrip("+~") for arg in overrides}
        overrides += [o for key, o in HYDRA_QUIET_OVERRIDES.items() if key not in present]
    if line.config_dir:
        overrides.append(f"hydra.searchpath=[file://{recipes_dir()}]")
    sys.argv = [sys.argv[0], *line.hydra_flags, *argv, *overrides]
    hydra.main(config_path=str(recipes_dir()), config_name=None, version_base=None)(_hydra_task)()


def _hydra_task(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from super_recipes.config.compose import parse_overrides

    hydra_cfg = HydraConfig.get()
    search_dirs = [Path(s.path) for s in hydra_cfg.runtime.config_sources if s.provider in ("main", "command-line")
                   and s.schema == "file"]
    source = RecipeSource(hydra_cfg.job.config_name, search_dirs or [recipes_dir()],
                          dict(hydra_cfg.runtime.choices), parse_overrides(list(hydra_cfg.overrides.task)))
    OmegaConf.set_struct(cfg, False)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    _run_reporting_errors(lambda: run_recipe(cfg, source))


def _run_reporting_errors(task: Any) -> None:
    from super_recipes.engine.interrupts import TrainingInterrupted

    try:
        task()
    except RecipeError as err:
        _exit_with(err)
    except TrainingInterrupted as stop:
        resume = " ".join(["python -m super_recipes.train_from_recipe", *_USER_ARGS, "resume=true"])
        print(f"Interrupted ({signal_name(stop.signum)}); saved {stop.checkpoint}. Resume with: {resume}",
              file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _exit_with(err: RecipeError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("SUPER_RECIPES_DEBUG") == "1":
        raise err
    text = str(err)
    if "Original Traceback" in text:
        # Raised in a DataLoader worker: torch wraps the message in the worker's traceback; keep the message.
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    print(f"Error: {text}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m super_recipes.train_from_recipe`` and ``super-recipes-train``."""
    user_args = list(sys.argv[1:] if argv is None else argv)
    _USER_ARGS[:] = [a for a in user_args if a.split("=", 1)[0] not in ("resume", "training_hyperparams.resume")]
    try:
        line = parse_command_line(user_args)
        check_recipe_exists(line.config_name, [Path(line.config_dir).expanduser().resolve()] if line.config_dir
                            else [])
        _check_training_override_keys(line.overrides)
    except RecipeError as err:
        _exit_with(err)
    if line.for_hydra:
        _run_hydra_main(line)
    elif line.cfg == "job":
        _run_reporting_errors(lambda: _print_job_config(line))
    else:
        def compose_and_run() -> None:
            from super_recipes.config.compose import compose_recipe

            cfg, source = compose_recipe(line.config_name, line.overrides, line.config_dir)
            run_recipe(cfg, source)

        _run_reporting_errors(compose_and_run)


def _check_training_override_keys(overrides: Sequence[str]) -> None:
    # Hydra refuses an override of a missing key but names no alternative; we know the schema, so we do.
    from super_recipes.config.training_params import training_param_names

    valid = training_param_names()
    for arg in expand_shortcuts(overrides):
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("training_hyperparams.") and "=" in arg:
            name = key.split(".")[1]
            if name not in valid:
                raise RecipeError(f"Unknown key training_hyperparams.{name} (command-line override '{arg}'). "
                                  f"{did_you_mean(name, valid)}".rstrip())


if __name__ == "__main__":
    main()
