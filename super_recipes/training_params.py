"""The schema of ``training_hyperparams``: every key, its type and its default, checked before training starts.

OmegaConf validates a recipe against this dataclass (unknown keys such as ``max_epoch`` and values of the wrong
type are refused); :func:`parse_training_params` turns its terse messages into ones that name the key, the file
it came from and the closest valid keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from super_recipes.errors import RecipeError, did_you_mean


@dataclass
class TrainingParams:
    """``training_hyperparams``: see the README's table for the meaning of each key."""

    max_epochs: int = 1
    initial_lr: Any = 0.1
    optimizer: Any = "SGD"
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    loss: Any = "CrossEntropyLoss"
    criterion_params: dict[str, Any] = field(default_factory=dict)
    loss_logging_items_names: Any = None

    lr_mode: Any = None
    lr_updates: list[int] = field(default_factory=list)
    lr_decay_factor: float = 0.1
    step_lr_update_freq: Any = None
    lr_warmup_epochs: int = 0
    warmup_initial_lr: Any = None
    lr_cooldown_epochs: int = 0
    cosine_final_lr_ratio: float = 0.01
    poly_lr_power: float = 0.9
    warmup_mode: str = "LinearEpochLRWarmup"
    lr_warmup_steps: int = 0
    lr_schedule_function: Any = None
    zero_weight_decay_on_bias_and_bn: bool = False

    ema: bool = False
    ema_params: dict[str, Any] = field(default_factory=lambda: {"decay": 0.9999, "decay_type": "exp", "beta": 15})
    mixed_precision: bool = False
    amp_dtype: str = "float16"
    batch_accumulate: int = 1
    clip_grad_norm: Any = None
    torch_compile: bool = False
    torch_compile_options: dict[str, Any] = field(default_factory=dict)
    sync_bn: bool = False
    find_unused_parameters: bool = False

    train_metrics_list: Any = field(default_factory=list)
    valid_metrics_list: Any = field(default_factory=lambda: ["Accuracy"])
    metric_to_watch: str = "Accuracy"
    greater_metric_to_watch_is_better: bool = True

    seed: int = 42
    deterministic: bool = False
    run_validation_freq: int = 1
    max_train_batches: Any = None
    max_valid_batches: Any = None
    save_model: bool = True
    silent_mode: bool = False
    log_every_n_steps: int = 10
    phase_callbacks: Any = field(default_factory=list)
    save_ckpt_epoch_list: list[int] = field(default_factory=list)
    ckpt_every_n_steps: Any = None
    resume: bool = False
    resume_path: Any = None
    resume_allow_changes: bool = False
    average_best_models: bool = False
    average_best_models_k: int = 10

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy, as stored in checkpoints."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def training_param_names() -> list[str]:
    """All valid ``training_hyperparams`` keys."""
    return [f.name for f in fields(TrainingParams)]


def parse_training_params(params: Any, origin: Any = None) -> TrainingParams:
    """Validate ``training_hyperparams`` (a mapping or DictConfig) into :class:`TrainingParams`.

    ``origin(key) -> str`` optionally tells which file or override a key came from, for the error message.
    """
    if isinstance(params, TrainingParams):
        return params
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    if params is None:
        params = {}
    user = params if OmegaConf.is_config(params) else OmegaConf.create(dict(params))
    _refuse_unknown_keys(user, origin)
    schema = OmegaConf.structured(TrainingParams)
    try:
        merged = OmegaConf.merge(schema, user)
    except (ValidationError, ConfigKeyError) as err:
        key = getattr(err, "full_key", "") or getattr(err, "key", "") or "?"
        key = str(key).split(".")[-1]
        where = _where(key, origin)
        raise RecipeError(
            f"Bad value for training_hyperparams.{key}{where}: {err.msg if hasattr(err, 'msg') else err}"
            .split("\n")[0]
        ) from None
    return OmegaConf.to_object(merged)


def _refuse_unknown_keys(user: Any, origin: Any) -> None:
    valid = training_param_names()
    unknown = [str(k) for k in user.keys() if k not in valid]
    if not unknown:
        return
    lines = []
    for key in unknown:
        hint = did_you_mean(key, valid)
        lines.append(f"Unknown key training_hyperparams.{key}{_where(key, origin)}. {hint}".rstrip())
    lines.append("See recipes/training_hyperparams/default_train_params.yaml for every valid key.")
    raise RecipeError("\n".join(lines))


def _where(key: str, origin: Any) -> str:
    source = origin(key) if origin else ""
    return f" (from {source})" if source else ""
