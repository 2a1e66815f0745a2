"""What surrounds one ``Trainer.train()`` call: the process group, console and file logging, the experiment
folder's run files, and the TensorBoard process.

On entry (rank 0 writes, the other ranks only log errors): join the torchrun group when launched by one, create
the experiment folder (removing temporary checkpoint files a killed save left behind), attach ``train.log`` and,
with ``save_full_train_log``, ``full_train_log.log``; write ``recipe.yaml`` (the resolved recipe, or the training
params with objects written as ``_target_`` nodes), ``installed_packages.txt`` with ``log_installed_packages``,
and start TensorBoard with ``launch_tensorboard``. On exit everything is undone, and an error that ends the run
is written with its traceback to the full log.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from super_recipes.callbacks.loggers import LOG_FILE_NAME, configure_console_logging
from super_recipes.engine.checkpoints import remove_stale_temporary_files
from super_recipes.engine.distributed import current_world, join_process_group, launched_by_torchrun
from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")

RECIPE_FILE_NAME = "recipe.yaml"
FULL_LOG_FILE_NAME = "full_train_log.log"
PACKAGES_FILE_NAME = "installed_packages.txt"
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class RunEnvironment:
    """Context manager around one training run (see the module docstring)."""

    def __init__(self, trainer: Any, params: Any, model: Any = None):
        self.trainer, self.params, self.model = trainer, params, model
        self.recipe_yaml: str | None = None
        self.params_yaml: str = ""
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._root_level: int | None = None
        self._tensorboard: Any = None

    def __enter__(self) -> RunEnvironment:
        trainer, params = self.trainer, self.params
        if launched_by_torchrun():
            trainer.device = join_process_group(trainer.device)
        trainer.world = current_world()
        rank_zero = trainer.world.is_rank_zero
        # Ranks other than 0 stay quiet unless they fail; only rank 0 writes files.
        configure_console_logging(silent=params.silent_mode, errors_only=not rank_zero)
        self.recipe_yaml, self.params_yaml, recipe_file = _recipe_texts(trainer, params, self.model)
        if not rank_zero:
            return self
        folder = trainer.experiment_dir
        if folder.exists() and not folder.is_dir():
            raise RecipeError(f"The experiment folder {folder} is a file; choose another experiment_name or "
                              "ckpt_root_dir.")
        folder.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporary_files(folder)
        self._attach(logger, logging.FileHandler(folder / LOG_FILE_NAME, encoding="utf-8"),
                     logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        if removed:
            logger.info(f"Removed {len(removed)} temporary file(s) of an interrupted save: {', '.join(removed)}")
        if params.save_full_train_log:
            self._attach_full_log(folder / FULL_LOG_FILE_NAME)
        (folder / RECIPE_FILE_NAME).write_text(recipe_file)
        if params.log_installed_packages:
            packages = installed_packages()
            (folder / PACKAGES_FILE_NAME).write_text("\n".join(packages) + "\n")
            logger.info(f"{len(packages)} installed packages listed in {folder / PACKAGES_FILE_NAME}")
        if params.launch_tensorboard:
            from super_recipes.engine.tensorboard_process import TensorBoardProcess

            self._tensorboard = TensorBoardProcess(folder, params.tensorboard_port).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and self._root_level is not None:
            logging.getLogger("full_train_log").error("The run ended with an error:",
                                                              exc_info=(exc_type, exc, tb))
        if self._tensorboard is not None:
            self._tensorboard.stop()
        for owner, handler in self._handlers:
            owner.removeHandler(handler)
            handler.close()
        if self._root_level is not None:
            logging.getLogger().setLevel(self._root_level)
            logging.captureWarnings(False)

    def _attach(self, owner: logging.Logger, handler: logging.Handler, formatter: logging.Formatter) -> None:
        handler.setFormatter(formatter)
        owner.addHandler(handler)
        self._handlers.append((owner, handler))

    def _attach_full_log(self, path: Path) -> None:
        """Every logger of the process (the root logger, ours and captured warnings) into one more file."""
        handler = logging.FileHandler(path, encoding="utf-8")
        root = logging.getLogger()
        self._root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        self._attach(root, handler, _FORMAT)
        self._attach(logger, handler, _FORMAT)  # ours does not propagate to the root logger
        logging.captureWarnings(True)
        logger.info(f"Full log of this process: {path}")


def _recipe_texts(trainer: Any, params: Any, model: Any) -> tuple[str | None, str, str]:
    """(recipe for checkpoints, training params for checkpoints, content of recipe.yaml)."""
    from omegaconf import OmegaConf

    from super_recipes.config.describe import describe, qualified_name

    described = describe(params.to_dict())
    params_yaml = OmegaConf.to_yaml(OmegaConf.create(described))
    recipe = trainer.recipe
    if recipe is not None:
        text = OmegaConf.to_yaml(recipe if OmegaConf.is_config(recipe) else OmegaConf.create(recipe), resolve=True)
        return text, params_yaml, text
    # A Python-API run: what it trained, as far as it can be written down.
    summary = {"experiment_name": trainer.experiment_name, "ckpt_root_dir": str(trainer.ckpt_root_dir),
               "device": str(trainer.device),
               **({"architecture": qualified_name(model)} if model is not None else {}),
               "training_hyperparams": described}
    return None, params_yaml, OmegaConf.to_yaml(OmegaConf.create(summary))


def installed_packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted (``log_installed_packages``)."""
    from importlib import metadata

    found = {(dist.metadata["Name"] or "?"): dist.version for dist in metadata.distributions()}
    return [f"{name}=={version}" for name, version in sorted(found.items(), key=lambda kv: kv[0].lower())] + [
        f"# python {sys.version.split()[0]}"]
