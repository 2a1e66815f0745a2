"""SuperGradients 1.x ``SgModel`` and ``DatasetInterface`` over this package's :class:`~super_recipes.Trainer`.

Serves scripts written for the SG 1.x user guide ("Integrating Your Training Code"): they run here after
changing only their import lines::

    from super_recipes.compat.sg1 import SgModel, DatasetInterface      # super_gradients.training[.datasets...]
    from super_recipes.compat.sg1 import utils as core_utils            # super_gradients.training.utils
    from super_recipes.compat.sg1 import cross_entropy                  # ...losses.label_smoothing_cross_entropy_loss
    from super_recipes.compat.sg1 import Accuracy, Top5                 # super_gradients.training.metrics

Training parameters keep SG's names (they are this package's ``training_hyperparams``); the few 1.x spellings
that differ are translated by :func:`translate_training_params`, and what cannot apply here (S3, DataParallel,
SG loggers) is refused with a :class:`~super_recipes.errors.RecipeError`. Nothing is registered at import time.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from super_recipes.errors import RecipeError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset

__all__ = ["DatasetInterface", "HpmStruct", "SgModel", "core_utils", "cross_entropy", "get_param",
           "translate_training_params", "utils"]


class HpmStruct(dict):
    """A dict whose keys are also attributes (SG's ``HpmStruct``): ``p.dataset_dir`` is ``p["dataset_dir"]``."""

    def __getattr__(self, name: str) -> Any:  # only called for names that are not real attributes
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def override(self, **entries: Any) -> None:
        """Set several entries at once (SG's ``HpmStruct.override``)."""
        self.update(entries)


def get_param(params: Any, name: str, default_val: Any = None) -> Any:
    """``params[name]`` for a mapping, ``params.name`` otherwise; ``default_val`` when absent (SG's ``get_param``)."""
    if params is None:
        return default_val
    if isinstance(params, Mapping):
        return params.get(name, default_val)
    return getattr(params, name, default_val)


# ``from super_gradients.training import utils as core_utils`` becomes an import of this object.
utils = core_utils = SimpleNamespace(get_param=get_param, HpmStruct=HpmStruct)

# The 1.x guide's "Dataset Parameters" defaults (val_batch_size is SG 1.x's own default).
DEFAULT_DATASET_PARAMS: dict[str, Any] = {
    "batch_size": 64, "val_batch_size": 200, "test_batch_size": 200, "dataset_dir": "./data/", "s3_link": None}


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean", smooth_eps: float | None = None,
                  smooth_dist: torch.Tensor | None = None, from_logits: bool = True) -> torch.Tensor:
    """Cross-entropy with label smoothing (SG 1.x's ``cross_entropy``, used by the guide's loss class).

    ``target`` holds class indices or per-class probabilities. The target distribution becomes
    ``(1 - smooth_eps) * target + smooth_eps * smooth_dist`` (``smooth_dist`` defaults to uniform), so with class
    indices and no ``smooth_dist`` this equals ``F.cross_entropy(..., label_smoothing=smooth_eps)``, ``weight`` and
    ``ignore_index`` included. ``from_logits=False``: ``input`` already holds log-probabilities.
    """
    import torch.nn.functional as F

    if reduction not in ("mean", "sum", "none"):
        raise RecipeError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    log_probs = F.log_softmax(input, dim=-1) if from_logits else input  # classes on the last dimension
    num_classes, valid = log_probs.shape[-1], None
    if target.is_floating_point():
        dist = target.to(log_probs.dtype)
    else:
        valid = target != ignore_index
        target = target.masked_fill(~valid, 0).long()
        dist = F.one_hot(target, num_classes).to(log_probs.dtype)
    if smooth_eps:
        prior = smooth_dist.to(log_probs) if smooth_dist is not None else 1 / num_classes
        dist = (1 - smooth_eps) * dist + smooth_eps * prior
    loss = -(dist * (log_probs * weight.to(log_probs) if weight is not None else log_probs)).sum(dim=-1)
    loss = loss * valid if valid is not None else loss
    if reduction != "mean":
        return loss.sum() if reduction == "sum" else loss
    if valid is None:
        return loss.mean()
    # As torch: the mean over the kept samples, each counted with its target class's weight.
    return loss.sum() / (weight.to(loss)[target] * valid if weight is not None else valid.to(loss)).sum()


class DatasetInterface:
    """Wraps ``trainset``/``valset`` (and optionally ``testset``, ``classes``) that a subclass sets in ``__init__``,
    and builds their DataLoaders (SG 1.x ``DatasetInterface``). ``self.dataset_params`` is an :class:`HpmStruct` of
    :data:`DEFAULT_DATASET_PARAMS` updated with ``dataset_params``; ready loaders may be passed instead of sets.
    """

    def __init__(self, dataset_params: Mapping[str, Any] | None = None, train_loader: Any = None,
                 val_loader: Any = None, test_loader: Any = None, classes: Any = None):
        self.dataset_params = HpmStruct(DEFAULT_DATASET_PARAMS)
        self.dataset_params.override(**dict(dataset_params or {}))
        self.trainset: Dataset | None = None
        self.valset: Dataset | None = None
        self.testset: Dataset | None = None
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.classes = classes

    def build_data_loaders(self, batch_size_factor: int = 1, num_workers: int = 8, train_batch_size: int | None = None,
                           val_batch_size: int | None = None, test_batch_size: int | None = None,
                           distributed_sampler: bool = False) -> None:
        """Build ``train_loader`` (shuffled), ``val_loader`` and, with a ``testset``, ``test_loader``.

        Batch sizes default to ``dataset_params`` ``batch_size``/``val_batch_size``/``test_batch_size`` times
        ``batch_size_factor``; ``distributed_sampler`` gives every loader a ``DistributedSampler``.
        """
        import torch
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        if self.trainset is None or self.valset is None:
            raise RecipeError(f"{type(self).__name__} has no trainset/valset: set self.trainset and self.valset "
                              "(torch Datasets) in its __init__, or pass train_loader/val_loader.")
        params = self.dataset_params

        def loader(dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
            sampler = DistributedSampler(dataset, shuffle=shuffle) if distributed_sampler else None
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                              num_workers=num_workers, pin_memory=torch.cuda.is_available())

        self.train_loader = loader(self.trainset, train_batch_size or params.batch_size * batch_size_factor, True)
        self.val_loader = loader(self.valset, val_batch_size or params.val_batch_size * batch_size_factor, False)
        if self.testset is not None:
            self.test_loader = loader(self.testset, test_batch_size or params.test_batch_size * batch_size_factor,
                                      False)

    def get_data_loaders(self, **kwargs: Any) -> tuple[Any, Any, Any, Any]:
        """``(train_loader, val_loader, test_loader, classes)``, building the loaders first (``kwargs`` go to
        :meth:`build_data_loaders`) unless they were given or built already."""
        if self.train_loader is None and self.val_loader is None:
            self.build_data_loaders(**kwargs)
        if self.classes is None:
            self.classes = getattr(self.trainset, "classes", None)
        return self.train_loader, self.val_loader, self.test_loader, self.classes

    def get_dataset_params(self) -> HpmStruct:
        return self.dataset_params


def translate_training_params(training_params: Mapping[str, Any]) -> dict[str, Any]:
    """SG 1.x ``training_params`` -> this package's ``training_hyperparams`` (same names, a few 1.x spellings).

    ``launch_tensorboard_process`` -> ``launch_tensorboard``; ``loss: "cross_entropy"`` (with ``smooth_eps``) ->
    ``CrossEntropyLoss`` (with ``label_smoothing``), ``"mse"`` -> ``MSELoss``; ``optimizer: "RMSProp"`` ->
    ``RMSprop``; ``ema_params.exp_activation`` -> ``decay_type``. Display-only keys are dropped; S3, SG loggers
    and dataset statistics are refused. Every other key is checked by the Trainer like any recipe key.
    """
    params = dict(training_params)
    for key in ("tb_files_user_prompt", "metrics_progress_verbose"):
        params.pop(key, None)  # console prompts/verbosity: nothing to do here
    for key, inert in (("save_tensorboard_to_s3", False), ("dataset_statistics", False),
                       ("sg_logger", "base_sg_logger"), ("sg_logger_params", {})):
        value = params.pop(key, inert)
        if value not in (inert, None):
            raise RecipeError(f"training_params.{key}={value!r} has no equivalent here: remove it (TensorBoard, "
                              "train.log and metrics.csv are written to the experiment folder).")
    if "launch_tensorboard_process" in params:
        params.setdefault("launch_tensorboard", params.pop("launch_tensorboard_process"))
    loss = params.get("loss")
    if isinstance(loss, str) and loss in _LOSS_NAMES:
        criterion = dict(params.get("criterion_params") or {})
        if "smooth_eps" in criterion:
            criterion["label_smoothing"] = criterion.pop("smooth_eps") or 0.0
        params["loss"], params["criterion_params"] = _LOSS_NAMES[loss], criterion
    if params.get("optimizer") == "RMSProp":
        params["optimizer"] = "RMSprop"
    ema_params = params.get("ema_params")
    if isinstance(ema_params, Mapping) and "exp_activation" in ema_params:
        ema_params = dict(ema_params)
        ema_params["decay_type"] = "exp" if ema_params.pop("exp_activation") else "constant"
        params["ema_params"] = ema_params
    return params


_LOSS_NAMES = {"cross_entropy": "CrossEntropyLoss", "mse": "MSELoss"}  # SG 1.x loss names with an equivalent


class SgModel:
    """SG 1.x ``SgModel``: ``connect_dataset_interface``, ``build_model``, ``train``, ``test`` over one
    :class:`~super_recipes.Trainer` writing to ``<ckpt_root_dir>/<experiment_name>/`` (default ``./checkpoints``).

    ``multi_gpu`` may be off (``None``/``"Off"``) or DDP when the script is started by ``torchrun`` (the Trainer
    joins the process group and shards the data itself); ``DataParallel`` and non-local checkpoints are refused.
    ``overwrite_local_checkpoint`` and ``post_prediction_callback`` are accepted and have no effect here.
    """

    def __init__(self, experiment_name: str, device: str | None = None, multi_gpu: Any = None,
                 model_checkpoints_location: str = "local", overwrite_local_checkpoint: bool = True,
                 ckpt_name: str = "ckpt_latest.pth", post_prediction_callback: Any = None,
                 ckpt_root_dir: str | Path | None = None, train_loader: Any = None, valid_loader: Any = None,
                 test_loader: Any = None, classes: Any = None):
        from super_recipes.engine.distributed import launched_by_torchrun
        from super_recipes.engine.trainer import Trainer

        mode = str(getattr(multi_gpu, "value", multi_gpu)).replace("_", "").lower()
        ddp = mode in ("ddp", "distributeddataparallel") and launched_by_torchrun()
        if mode not in ("none", "off", "false", "auto") and not ddp:
            raise RecipeError(f"multi_gpu={multi_gpu!r} is not supported here: use None/'Off', or DDP in a script "
                              "started by torchrun (one process per GPU; the Trainer joins its process group).")
        if model_checkpoints_location != "local":
            raise RecipeError(f"model_checkpoints_location={model_checkpoints_location!r}: only 'local' is "
                              "supported (checkpoints go to <ckpt_root_dir>/<experiment_name>/).")
        self.experiment_name, self.ckpt_name = experiment_name, ckpt_name
        self.post_prediction_callback = post_prediction_callback
        self.trainer = Trainer(experiment_name, ckpt_root_dir, device)
        self.device = self.trainer.device
        self.checkpoints_dir_path = self.trainer.experiment_dir
        self.train_loader, self.valid_loader, self.test_loader, self.classes = (
            train_loader, valid_loader, test_loader, classes)
        self.dataset_interface: DatasetInterface | None = None
        self.dataset_params: HpmStruct | None = None
        self.net: torch.nn.Module | None = None
        self.arch_params: HpmStruct = HpmStruct()
        self.training_params: dict[str, Any] = {}
        self.best_metric: float | None = None
        self._resume_path: Path | None = None
        self._test_defaults: tuple[Any, Any] = (None, None)  # (loss, validation metrics) of the last train()
        self.last_test_results: dict[str, float] = {}

    def connect_dataset_interface(self, dataset_interface: DatasetInterface, data_loader_num_workers: int = 8) -> None:
        """Build the interface's loaders (``data_loader_num_workers`` workers each) and keep them and its classes."""
        self.dataset_interface = dataset_interface
        # No DistributedSampler even under DDP: the Trainer shards the training and validation data itself.
        self.train_loader, self.valid_loader, self.test_loader, self.classes = dataset_interface.get_data_loaders(
            batch_size_factor=1, num_workers=data_loader_num_workers, distributed_sampler=False)
        self.dataset_params = dataset_interface.get_dataset_params()

    def build_model(self, architecture: str | torch.nn.Module, arch_params: Mapping[str, Any] | None = None,
                    checkpoint_params: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Set ``self.net``: a registered model name built by :func:`super_recipes.models.get` with ``arch_params``
        (``num_classes`` from the connected dataset's classes when absent; ``pretrained_weights`` loads published
        weights), or an ``nn.Module`` used as is.

        ``checkpoint_params`` (or the same keyword arguments): ``load_checkpoint`` loads ``<experiment
        folder>/<ckpt_name>`` (or ``source_ckpt_folder_name``'s, or ``external_checkpoint_path``) into the model
        and, unless ``load_weights_only``, makes the next :meth:`train` resume from it; ``strict_load``,
        ``load_backbone`` and ``load_ema_as_net`` apply to that load.
        """
        import torch

        from super_recipes import models
        from super_recipes.models.weights import load_weights

        ckpt = {**dict(checkpoint_params or {}), **kwargs}
        known = {"load_checkpoint", "strict_load", "source_ckpt_folder_name", "load_weights_only", "load_backbone",
                 "external_checkpoint_path", "load_ema_as_net"}
        unknown = sorted(set(ckpt) - known)
        if unknown:
            raise RecipeError(f"build_model: unknown checkpoint parameter(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(known))}.")
        self.arch_params = HpmStruct(dict(arch_params or {}))
        if isinstance(architecture, torch.nn.Module):
            net = architecture
        elif isinstance(architecture, str):
            params = dict(self.arch_params)
            pretrained = params.pop("pretrained_weights", None)
            if "num_classes" not in params and self.classes is not None:
                params["num_classes"] = len(self.classes)
            net = models.get(architecture, arch_params=params, pretrained_weights=pretrained)
        else:
            raise RecipeError(f"build_model: architecture must be a registered model name or an nn.Module, got "
                              f"{type(architecture).__name__}.")
        self._resume_path = None
        if ckpt.get("load_checkpoint"):
            folder = self.trainer.ckpt_root_dir / ckpt.get("source_ckpt_folder_name") \
                if ckpt.get("source_ckpt_folder_name") else self.checkpoints_dir_path
            path = Path(ckpt.get("external_checkpoint_path") or folder / self.ckpt_name)
            if not path.is_file():
                raise RecipeError(f"build_model(load_checkpoint=True): no checkpoint at {path}.")
            load_weights(net, path, ckpt.get("strict_load", True), bool(ckpt.get("load_backbone")),
                         bool(ckpt.get("load_ema_as_net")))
            if not ckpt.get("load_weights_only"):
                self._resume_path = path
        self.net = net

    def train(self, training_params: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Train ``self.net`` on the connected loaders with SG 1.x ``training_params``; returns the last epoch's
        record (``{"valid/Accuracy": ...}``). After :meth:`build_model` with ``load_checkpoint``, resumes."""
        if self.net is None:
            raise RecipeError("SgModel.train: no model; call build_model(...) first.")
        if self.train_loader is None:
            raise RecipeError("SgModel.train: no data; call connect_dataset_interface(...) first.")
        params = translate_training_params(training_params or {})
        if self._resume_path is not None and "resume" not in params and "resume_path" not in params:
            params["resume_path"] = str(self._resume_path)
        self.training_params = params
        record = self.trainer.train(model=self.net, training_params=params, train_loader=self.train_loader,
                                    valid_loader=self.valid_loader)
        self.best_metric = self.trainer.state.best_metric
        self._test_defaults = (self.trainer.loss_fn, self.trainer.params.valid_metrics_list)
        return record

    def test(self, test_loader: Any = None, loss: Any = None, silent_mode: bool = False,
             test_metrics_list: Any = None, loss_logging_items_names: list[str] | None = None,
             metrics_progress_verbose: bool = False, test_phase_callbacks: Any = None,
             use_ema_net: bool = True) -> tuple[float, ...]:
        """Evaluate ``self.net`` (its EMA after training with ``ema``) as SG 1.x does: returns a tuple of the loss
        items (when a loss applies) followed by the metric values, in ``test_metrics_list`` order.

        Defaults: the connected test loader (else the validation loader), the loss and validation metrics of the
        last :meth:`train`. The same values, named, are kept in ``self.last_test_results``.
        """
        if self.net is None:
            raise RecipeError("SgModel.test: no model; call build_model(...) first.")
        loader = test_loader or self.test_loader or self.valid_loader
        if loader is None:
            raise RecipeError("SgModel.test: no test data; pass test_loader or connect_dataset_interface(...).")
        default_loss, default_metrics = self._test_defaults
        metrics = test_metrics_list if test_metrics_list is not None else copy.deepcopy(default_metrics)
        if not metrics:
            raise RecipeError("SgModel.test: no metrics; pass test_metrics_list (or train first to reuse "
                              "valid_metrics_list).")
        ema = self.trainer.ema if use_ema_net and self.trainer.net is self.net else None  # the EMA of this net
        net = ema.module if ema is not None else self.net
        if loss is None:
            loss = default_loss
            loss_logging_items_names = loss_logging_items_names or self.training_params.get("loss_logging_items_names")
        results = self.trainer.test(net, loader, metrics, loss=loss, callbacks=list(test_phase_callbacks or ()))
        names = list(results)
        if loss is not None and loss_logging_items_names:  # the loss items come first
            names[:len(loss_logging_items_names)] = [f"test/{n}" for n in loss_logging_items_names]
        self.last_test_results = dict(zip(names, results.values(), strict=True))
        return tuple(results.values())


def __getattr__(name: str) -> Any:
    """``Accuracy`` and ``Top5`` (SG's ``training.metrics``), imported on first use."""
    if name in ("Accuracy", "Top5"):
        from super_recipes import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
