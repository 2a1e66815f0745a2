"""Command line: ``python -m super_recipes.train_from_recipe --config-name=NAME [overrides...]``.

With no ``--config-name`` it runs the built-in offline recipe ``shapes_resnet``. Overrides use Hydra's grammar
(``training_hyperparams.max_epochs=3``, ``dataset_params=cifar10_dataset_params``) plus the shortcuts in
:data:`super_recipes.recipe.SHORTCUTS` (``epochs=``, ``lr=``, ``batch_size=``...). Hydra's ``--cfg job``,
``--info`` and ``--config-dir DIR`` work as usual. Outputs go to ``<ckpt_root_dir>/<experiment_name>/`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.paths import recipes_dir
from super_recipes.recipe import (
    DEFAULT_RECIPE,
    RecipeSource,
    check_recipe_exists,
    check_top_level,
    expand_shortcuts,
    import_user_modules,
)

RECIPE_FILE_NAME = "recipe.yaml"
_USER_ARGS: list[str] = []  # the command line as typed, for the resume hint after an interruption

# Keep Hydra from creating outputs/DATE/TIME folders, .hydra copies and its own log files: every output of a run
# belongs in <ckpt_root_dir>/<experiment_name>/.
HYDRA_QUIET_OVERRIDES = {
    "hydra.run.dir": "hydra.run.dir=.",
    "hydra.output_subdir": "hydra.output_subdir=null",
    "hydra/job_logging": "hydra/job_logging=none",
    "hydra/hydra_logging": "hydra/hydra_logging=none",
}


def prepare_argv(argv: Sequence[str]) -> list[str]:
    """Expand shortcuts, default the recipe name, silence Hydra's own outputs, and pre-check what we can."""
    argv = expand_shortcuts(argv)
    config_name, config_dirs = _option(argv, "--config-name", "-cn"), _option(argv, "--config-dir", "-cd")
    if config_name is None:
        argv = [f"--config-name={DEFAULT_RECIPE}", *argv]
        config_name = DEFAULT_RECIPE
    check_recipe_exists(config_name, [Path(config_dirs).resolve()] if config_dirs else [])
    _check_training_overrides(argv)
    if any(arg in ("--info", "-i", "--help", "-h", "--hydra-help") for arg in argv):
        return argv  # nothing runs, nothing is written; `--info` would also read an appended override as its choice
    present = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    return [*argv, *(o for key, o in HYDRA_QUIET_OVERRIDES.items() if key not in present)]


def _option(argv: Sequence[str], long: str, short: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in (long, short):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
    return None


def _check_training_overrides(argv: Sequence[str]) -> None:
    # Hydra refuses an override of a missing key but names no alternative; we know the schema, so we do.
    from super_recipes.training_params import training_param_names

    valid = training_param_names()
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("training_hyperparams.") and "=" in arg:
            name = key.split(".")[1]
            if name not in valid:
                raise RecipeError(f"Unknown key training_hyperparams.{name} (command-line override '{arg}'). "
                                  f"{did_you_mean(name, valid)}".rstrip())


def run_recipe(cfg: Any, source: RecipeSource | None = None) -> dict[str, float]:
    """Validate a composed recipe, build everything it names, and train. Returns the last epoch's record."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from super_recipes import dataloaders, models
    from super_recipes.models.weights import load_initial_weights
    from super_recipes.engine.reproducibility import seed_everything
    from super_recipes.engine.trainer import Trainer
    from super_recipes.training_params import parse_training_params

    import_user_modules(cfg, source)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise RecipeError(f"Cannot resolve the recipe: {str(err).splitlines()[0]}") from None
    check_top_level(cfg, source)
    params = parse_training_params(
        cfg.training_hyperparams,
        origin=(lambda key: source.origin(f"training_hyperparams.{key}")) if source else None,
    )
    check_names(cfg, params)
    processes = check_devices(cfg)
    from super_recipes.callbacks.loggers import configure_console_logging

    # Weight-loading reports print before training starts; ranks other than 0 stay quiet.
    configure_console_logging(silent=params.silent_mode, errors_only=os.environ.get("RANK", "0") != "0")
    from super_recipes.engine.distributed import launched_by_torchrun

    if processes > 1 and not launched_by_torchrun():
        return _launch_distributed(cfg, processes)

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
    if launched_by_torchrun():
        from super_recipes.engine.distributed import leave_process_group

        success = False
        try:
            record = _train_with(trainer, cfg, model, params, train_loader, valid_loader)
            success = True
            return record
        finally:
            leave_process_group(success)
    return _train_with(trainer, cfg, model, params, train_loader, valid_loader)


def _train_with(trainer: Any, cfg: Any, model: Any, params: Any, train_loader: Any, valid_loader: Any) -> dict:
    from omegaconf import OmegaConf

    if os.environ.get("RANK", "0") == "0":
        trainer.experiment_dir.mkdir(parents=True, exist_ok=True)
        (trainer.experiment_dir / RECIPE_FILE_NAME).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return trainer.train(model=model, training_params=params, train_loader=train_loader,
                         valid_loader=valid_loader)


def check_names(cfg: Any, params: Any) -> None:
    """Look up every registry name the recipe uses, so a typo fails before anything heavy is built."""
    from omegaconf import OmegaConf

    from super_recipes.registry import (
        CALLBACKS,
        DATALOADERS,
        LOSSES,
        METRICS,
        MODELS,
        OPTIMIZERS,
        check_arguments,
        split_spec,
    )

    arch_params = OmegaConf.to_container(cfg.get("arch_params") or OmegaConf.create({}), resolve=True)
    check_arguments(MODELS.get(cfg.architecture, "architecture"), arch_params, f"model '{cfg.architecture}'",
                    "arch_params")
    for key in ("train_dataloader", "val_dataloader"):
        if cfg.get(key):
            DATALOADERS.get(cfg[key], key)
    split_spec(params.loss, LOSSES, "training_hyperparams.loss")
    if not (isinstance(params.optimizer, str) and "." in params.optimizer):
        split_spec(params.optimizer, OPTIMIZERS, "training_hyperparams.optimizer")
    from super_recipes.schedules import build_lr_schedule

    build_lr_schedule(params)  # cheap, and checks every schedule key
    for key, registry in (("train_metrics_list", METRICS), ("valid_metrics_list", METRICS),
                          ("phase_callbacks", CALLBACKS)):
        specs = getattr(params, key) or []
        for i, spec in enumerate(specs if isinstance(specs, list) else [specs]):
            split_spec(spec, registry, f"training_hyperparams.{key}[{i}]")


def check_devices(cfg: Any) -> int:
    """``device``, ``num_gpus``, ``multi_gpu``: refuse what cannot run; returns the processes to launch here."""
    from super_recipes.engine.devices import resolve_device
    from super_recipes.engine.distributed import requested_processes

    resolve_device(cfg.get("device"))
    return requested_processes(cfg)


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


def _hydra_task(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    hydra_cfg = HydraConfig.get()
    search_dirs = [Path(s.path) for s in hydra_cfg.runtime.config_sources if s.provider in ("main", "command-line")
                   and s.schema == "file"]
    source = RecipeSource(hydra_cfg.job.config_name, search_dirs or [recipes_dir()],
                          dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task))
    OmegaConf.set_struct(cfg, False)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    from super_recipes.engine.interrupts import TrainingInterrupted

    try:
        run_recipe(cfg, source)
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
    print(f"Error: {err}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m super_recipes.train_from_recipe`` and ``super-recipes-train``."""
    import hydra

    user_args = list(sys.argv[1:] if argv is None else argv)
    _USER_ARGS[:] = [a for a in user_args if a.split("=", 1)[0] not in ("resume", "training_hyperparams.resume")]
    try:
        args = prepare_argv(user_args)
    except RecipeError as err:
        _exit_with(err)
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=str(recipes_dir()), config_name=None, version_base=None)(_hydra_task)()


if __name__ == "__main__":
    main()
