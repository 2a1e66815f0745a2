"""``training_hyperparams``: the one source of truth for every key, its type, range, default and meaning.

:class:`TrainingParams` is checked by :func:`parse_training_params` before anything is built. The shipped
``recipes/training_hyperparams/default_train_params.yaml`` and the README's table are generated from it
(``python -m super_recipes.config.training_params --write``; a test keeps both equal to the output).

Keys that name an object (``loss``, ``optimizer``, ``*_metrics_list``, ``phase_callbacks``, ``lr_mode``,
``lr_schedule_function``, ``pre_prediction_callback``) take a recipe spec (``Name``, ``{Name: {kwargs}}``, a
``_target_`` node) or, from the Python API, the object itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from super_recipes.config.schema import (
    ObjectKind,
    Spec,
    check_schema,
    default_of,
    describe,
    problems_message,
    schema_hints,
)
from super_recipes.config.schema import key as k
from super_recipes.errors import RecipeError


class OptimizerObject(ObjectKind):
    text = "a torch.optim optimizer (class or instance)"

    @classmethod
    def matches(cls, value: Any) -> bool:
        import torch

        return isinstance(value, torch.optim.Optimizer) or (
            inspect.isclass(value) and issubclass(value, torch.optim.Optimizer))


class MetricObject(ObjectKind):
    text = "a metric object (update/compute)"

    @classmethod
    def matches(cls, value: Any) -> bool:
        if inspect.isclass(value):
            return hasattr(value, "update") and hasattr(value, "compute")
        return callable(getattr(value, "update", None)) and callable(getattr(value, "compute", None))


class CallbackObject(ObjectKind):
    text = "a callback object"

    @classmethod
    def matches(cls, value: Any) -> bool:
        from super_recipes.callbacks.base import Callback

        return isinstance(value, Callback) or (inspect.isclass(value) and issubclass(value, Callback))


class SchedulerObject(ObjectKind):
    text = "an LR scheduler (torch.optim.lr_scheduler class or instance, or a schedule callback)"

    @classmethod
    def matches(cls, value: Any) -> bool:
        from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

        from super_recipes.callbacks.base import Callback

        kinds = (LRScheduler, ReduceLROnPlateau, Callback)
        return isinstance(value, kinds) or (inspect.isclass(value) and issubclass(value, kinds))


@dataclass
class EmaParams:
    """``ema_params``."""

    decay: float = k(0.9999, "the EMA decay d", ge=0, le=1)
    decay_type: Literal["constant", "threshold", "exp"] = k("exp", "how the decay ramps up")
    beta: float = k(15.0, "exp: the ramp-up speed", ge=0)


MetricsList = Annotated[
    list[Spec | MetricObject] | dict[str, MetricObject] | Spec | MetricObject,
    "a list of metrics (names, {Name: {kwargs}}, _target_ nodes or metric objects)"]


@dataclass
class TrainingParams:
    """``training_hyperparams``; see the README's table (generated from the help texts below)."""

    max_epochs: int = k(1, "epochs to train (`E`)", ge=1)
    initial_lr: float | dict[str, float] = k(
        0.1, "base rate `lr0`, or a mapping of parameter-name prefixes to rates with a required `default` "
        "(`{default: 0.1, backbone: 0.01}`); a rate of 0 freezes the matching parameters", ge=0)
    optimizer: Spec | OptimizerObject = k(
        "SGD", "any `torch.optim` class name (`SGD`, `Adam`, `AdamW`, `RMSprop`...), a registered optimizer or a "
        "dotted path; Python API: an optimizer class, or an instance built on the model's parameters")
    optimizer_params: dict[str, Any] = k(
        {}, "optimizer keyword arguments (`momentum`, `weight_decay`, `nesterov`, `betas`...), checked against the "
        "optimizer's signature before training")
    zero_weight_decay_on_bias_and_bn: bool = k(
        False, "biases and normalisation-layer weights go to groups with `weight_decay: 0`")
    loss: Spec | Callable = k(
        "CrossEntropyLoss", "a registered loss or any `torch.nn` loss; Python API: a loss module, class or callable; "
        "may return `loss` or `(loss, items)`")
    criterion_params: dict[str, Any] = k({}, "loss keyword arguments (`label_smoothing`...)")
    loss_logging_items_names: list[str] | None = k(None, "names of the items of a loss that returns `(loss, items)`")

    lr_mode: Spec | SchedulerObject | None = k(
        None, "`step`, `cosine`, `poly`, `exp`, `function`, `constant`, or a torch scheduler "
        "`{StepLR: {step_size: 30, gamma: 0.1, phase: epoch}}` (null: constant); Python API: a scheduler class or "
        "an instance built on the optimizer, or a schedule callback")
    lr_updates: list[int] = k([], "`step`: rate x `lr_decay_factor` from each of these epochs on (milestone `m` "
                                  "applies from epoch `m`, as `MultiStepLR`)", ge=0)
    lr_decay_factor: float = k(0.1, "`step` and `exp` decay factor", ge=0)
    step_lr_update_freq: int | None = k(None, "`step`: a milestone every N epochs (instead of `lr_updates`)", ge=1)
    cosine_final_lr_ratio: float = k(
        0.01, "`cosine`: `lr = f + (lr0 - f)(1 + cos(pi p)) / 2`, `f = lr0 * ratio`", ge=0, le=1)
    poly_lr_power: float = k(0.9, "`poly`: `lr = lr0 (1 - p) ** power`", ge=0)
    lr_schedule_function: str | Callable | None = k(
        None, "`function`: a registered name (`register_lr_function`), a dotted path or (Python API) a callable "
        "`f(initial_lr, epoch, iter, max_epoch, iters_per_epoch) -> lr`")
    lr_warmup_epochs: int = k(0, "`LinearEpochLRWarmup`: epoch `e < W` uses `w0 + e (lr0 - w0) / W`", ge=0)
    warmup_mode: Literal["LinearEpochLRWarmup", "LinearBatchLRWarmup"] = k(
        "LinearEpochLRWarmup", "or `LinearBatchLRWarmup`: step `s < N` uses `w0 + s (lr0 - w0) / (N - 1)`")
    lr_warmup_steps: int = k(0, "`LinearBatchLRWarmup`: `N` optimizer steps of warmup (may span epochs)", ge=0)
    warmup_initial_lr: float | None = k(
        None, "`w0`; default `lr0 / (W + 1)` (epoch warmup) or `lr0 / N` (batch warmup)", ge=0)
    lr_cooldown_epochs: int = k(0, "the last `C` epochs keep the last rate used before cooldown", ge=0)

    ema: bool = k(False, "keep an exponential moving average of the weights; validation, `ckpt_best.pth` and the "
                         "best metric use it")
    ema_params: EmaParams = k(
        {"decay": 0.9999, "decay_type": "exp", "beta": 15.0}, "`decay_type`: `constant` (`d`), `threshold` "
        "(`min(d, (1+t)/(10+t))`), `exp` (`d (1 - exp(-beta t / T))`)")
    mixed_precision: bool = k(False, "train and validate under `torch.autocast` (GradScaler for float16 on CUDA)")
    amp_dtype: Literal["float16", "bfloat16", "fp16", "bf16"] = k(
        "float16", "`float16` or `bfloat16` (bfloat16 also on CPU; float16 on CPU falls back to bfloat16 with a "
        "warning)")
    batch_accumulate: int = k(
        1, "optimizer step every k micro-batches, loss divided by k: the update equals one k-times-larger batch",
        ge=1)
    clip_grad_norm: float | None = k(None, "clip the global gradient norm (after unscaling) before each optimizer "
                                           "step", gt=0)
    torch_compile: bool = k(False, "`torch.compile` the model for training and validation")
    torch_compile_options: dict[str, Any] = k({}, "`torch.compile` keyword arguments (`mode`, `backend`, "
                                                  "`dynamic`...)")
    sync_bn: bool = k(False, "DDP: convert BatchNorm layers to SyncBatchNorm")
    find_unused_parameters: bool = k(False, "DDP: allow a forward that leaves some parameters unused (slower; only "
                                            "when needed)")
    precise_bn: bool = k(False, "recompute the BatchNorm statistics of the validated model on training batches "
                                "before each validation")
    precise_bn_batch_size: int | None = k(
        None, "`precise_bn`: training samples (over all processes) the statistics are computed on; default: 8 "
        "global batches", ge=1)
    pre_prediction_callback: Spec | Callable | None = k(
        None, "`f(inputs, targets, batch_idx) -> (inputs, targets)` applied to every training batch before the "
        "forward pass, e.g. `MultiscalePrePredictionCallback`")

    train_metrics_list: MetricsList = k([], "metrics on training batches (costs time per step)")
    valid_metrics_list: MetricsList = k(
        ["Accuracy"], "metrics on the validation set: registered names, any torchmetrics class, or (Python API) "
        "metric objects")
    metric_to_watch: str = k("Accuracy", "validation metric or loss item that selects `ckpt_best.pth`")
    greater_metric_to_watch_is_better: bool = k(True, "direction of `metric_to_watch`")

    seed: int = k(42, "seeds python, numpy and torch before the model is built (rank r of DDP uses seed + r)",
                  ge=0)
    deterministic: bool = k(False, "deterministic torch kernels")
    run_validation_freq: int = k(1, "validate every N epochs (and after the last)", ge=1)
    max_train_batches: int | None = k(None, "cap on training batches per epoch", ge=1)
    max_valid_batches: int | None = k(None, "cap on validation batches per epoch", ge=1)
    save_model: bool = k(True, "write `ckpt_latest.pth` and `ckpt_best.pth`")
    save_ckpt_epoch_list: list[int] = k([], "also write `ckpt_epoch_{N}.pth` after these (0-based) epochs", ge=0)
    ckpt_every_n_steps: int | None = k(
        None, "also write `ckpt_latest.pth` every N optimizer steps inside an epoch (a kill loses at most N steps)",
        ge=1)
    resume: Annotated[bool | Literal["auto"], "true, false or auto"] = k(
        False, "`true`: continue `<ckpt_root_dir>/<experiment_name>/ckpt_latest.pth` (an error when it is missing); "
        "`auto`: continue it when present, else start fresh (one command for the first launch and every requeue)")
    resume_path: str | None = k(None, "continue from this checkpoint file")
    resume_allow_changes: bool = k(False, "resume even when run-defining recipe keys differ from the checkpoint's")
    load_opt_params: bool = k(True, "on resume, also restore the optimizer state (momentum buffers...); false "
                                    "starts the optimizer afresh on the restored weights")
    average_best_models: bool = k(False, "keep the k best snapshots by `metric_to_watch` and write "
                                         "`average_model.pth` (validated at the end)")
    average_best_models_k: int = k(10, "k for `average_best_models`", ge=1)
    silent_mode: bool = k(False, "no progress bar or console lines (the log file is still written)")
    log_every_n_steps: int = k(10, "TensorBoard: the training loss and the LRs every N optimizer steps (1: every "
                                   "step)", ge=1)
    save_full_train_log: bool = k(False, "also write `full_train_log.log`: every logger and warning of the "
                                         "process, and the traceback of an error that ends the run")
    log_installed_packages: bool = k(False, "write `installed_packages.txt` (every installed distribution and "
                                            "version) and log it to TensorBoard")
    launch_tensorboard: bool = k(False, "start TensorBoard on the experiment folder, print its address, stop it "
                                        "when training ends")
    tensorboard_port: int | None = k(None, "`launch_tensorboard`: the port (default: a free one)", ge=1, le=65535)
    phase_callbacks: Annotated[list[Spec | CallbackObject],
                               "a list of callbacks (names, {Name: {kwargs}}, _target_ nodes or callback objects)"] = k(
        [], "callbacks: `[Name, {Name: {kwargs}}]` (e.g. `{EarlyStop: {metric: Accuracy, mode: max, patience: "
        "5}}`), or (Python API) callback objects")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy (objects included as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def training_param_names() -> list[str]:
    """All valid ``training_hyperparams`` keys."""
    return [f.name for f in dataclasses.fields(TrainingParams)]


Origin = Callable[[str], str]


def parse_training_params(params: Any, origin: Origin | None = None) -> TrainingParams:
    """Check ``training_hyperparams`` (a mapping, DictConfig or TrainingParams) into :class:`TrainingParams`.

    Every unknown key and bad value is reported at once, each with the file or override it came from
    (``origin(dotted key) -> text``) and the closest valid keys. The keys the caller gave are kept in
    ``params.given_keys``.
    """
    if isinstance(params, TrainingParams):
        return params
    from super_recipes.registry import to_plain

    values = to_plain(params) if params is not None else {}
    if not isinstance(values, Mapping):
        raise RecipeError(f"training_hyperparams must be a mapping of keys to values, got {values!r}.")
    checked, problems = check_schema(TrainingParams, values)
    if problems:
        raise RecipeError(problems_message("training_hyperparams", problems, origin))
    parsed = TrainingParams(**checked)
    parsed.given_keys = frozenset(values)  # type: ignore[attr-defined]
    return parsed


# ------------------------------------------------------------------------------------- generated documentation
DEFAULT_YAML = Path("training_hyperparams") / "default_train_params.yaml"
README_BEGIN = "<!-- training_hyperparams table: generated by python -m super_recipes.config.training_params -->"
README_END = "<!-- end of the generated table -->"


def render_default_yaml() -> str:
    """The text of ``recipes/training_hyperparams/default_train_params.yaml``."""
    lines = ["# Every training_hyperparams key with its default and meaning. Generated from",
             "# super_recipes/config/training_params.py (python -m super_recipes.config.training_params --write);",
             "# do not edit by hand. Recipes pull this file (directly or through a file that extends it).", ""]
    for f in dataclasses.fields(TrainingParams):
        rule = f.metadata["rule"]
        kind = describe(schema_hints(TrainingParams)[f.name], rule)
        lines.append(f"# {_plain_text(rule.help)} [{kind}]")
        lines.append(f"{f.name}: {_yaml_value(default_of(f))}")
    return "\n".join(lines) + "\n"


def render_markdown_table() -> str:
    """The README's ``training_hyperparams`` table, markers included."""
    rows = [README_BEGIN, "| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(TrainingParams):
        rule = f.metadata["rule"]
        limits = f" ({rule.range_text()})" if rule.range_text() else ""
        default = _yaml_value(default_of(f))
        rows.append(f"| `{f.name}` | `{default}` | {rule.help}{limits} |")
    rows.append(README_END)
    return "\n".join(rows)


def _yaml_value(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False)
    return text.strip().removesuffix("\n...").strip()


def _plain_text(text: str) -> str:
    return text.replace("`", "")


def _write_generated(repo: Path) -> None:
    from super_recipes.paths import recipes_dir

    (recipes_dir() / DEFAULT_YAML).write_text(render_default_yaml())
    readme = repo / "README.md"
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + render_markdown_table() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write_generated(Path(__file__).resolve().parents[2])
    else:
        print(render_default_yaml())
