"""Optimizers (``optimizer``, ``optimizer_params``, ``initial_lr``, ``zero_weight_decay_on_bias_and_bn``).

Any ``torch.optim`` optimizer by class name (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``...), one registered with
``@register_optimizer``, or a dotted path / ``_target_`` node.

``initial_lr`` is a number or a mapping of parameter-name prefixes to rates with a required ``default``
(``{default: 0.1, backbone: 0.01}``): a parameter joins the group of the longest prefix that matches its name
(``backbone`` matches ``backbone.conv1.weight``). A rate of 0 freezes the matching parameters (they get
``requires_grad = False`` and stay out of the optimizer). Every group records its ``name`` and its
``initial_lr``, from which the LR schedules scale it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import OPTIMIZERS, call_with_kwargs, split_spec

# Normalisation layers whose affine weights, like biases, are conventionally exempt from weight decay.
_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
    torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm,
)


def build_optimizer(model: torch.nn.Module, params: Any) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters, grouped by ``initial_lr`` prefixes and decay."""
    spec = params.optimizer
    if isinstance(spec, str) and "." in spec and spec not in OPTIMIZERS:
        factory, kwargs = _import_optimizer(spec), {}
    else:
        factory, kwargs = split_spec(spec, OPTIMIZERS, "training_hyperparams.optimizer")
    kwargs = {**kwargs, **dict(params.optimizer_params or {})}
    groups = parameter_groups(model, params.initial_lr, params.zero_weight_decay_on_bias_and_bn)
    optimizer = call_with_kwargs(
        factory, {"params": groups, "lr": groups[0]["lr"], **kwargs},
        f"optimizer {getattr(factory, '__name__', spec)}", "training_hyperparams.optimizer_params",
    )
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def parameter_groups(model: torch.nn.Module, initial_lr: Any, zero_decay_on_bias_and_norm: bool) -> list[dict]:
    """Optimizer param groups for ``initial_lr`` (number or prefix mapping); see the module docstring."""
    rates = _rates_by_prefix(initial_lr)
    no_decay = _bias_and_norm_parameters(model) if zero_decay_on_bias_and_norm else set()
    prefixes = sorted(rates, key=len, reverse=True)
    groups: dict[str, dict] = {}
    matched: set[str] = set()
    for name, param in model.named_parameters():
        prefix = next((p for p in prefixes if p != "default" and (name == p or name.startswith(p + "."))),
                      "default")
        matched.add(prefix)
        rate = rates[prefix]
        if rate == 0:
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        key = f"{prefix}/no_decay" if id(param) in no_decay else prefix
        group = groups.setdefault(key, {"params": [], "name": key, "lr": rate, "initial_lr": rate})
        if key.endswith("/no_decay"):
            group["weight_decay"] = 0.0
        group["params"].append(param)
    unused = [p for p in rates if p != "default" and p not in matched]
    if unused:
        top_level = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise RecipeError(f"training_hyperparams.initial_lr: prefix(es) {unused} match no parameter of the model. "
                          f"{did_you_mean(unused[0], top_level)} Top-level modules: {', '.join(top_level)}")
    if not groups:
        raise RecipeError("training_hyperparams.initial_lr: every parameter is frozen; nothing to train.")
    return sorted(groups.values(), key=lambda g: (g["name"] != "default", g["name"]))


def _rates_by_prefix(initial_lr: Any) -> dict[str, float]:
    if isinstance(initial_lr, (int, float)) and not isinstance(initial_lr, bool):
        return {"default": float(initial_lr)}
    if isinstance(initial_lr, Mapping) or hasattr(initial_lr, "items"):
        rates = dict(initial_lr.items())
        if "default" not in rates:
            raise RecipeError("training_hyperparams.initial_lr: a mapping of prefixes needs a 'default' rate, "
                              f"got keys {sorted(rates)}.")
        try:
            return {str(k): float(v) for k, v in rates.items()}
        except (TypeError, ValueError):
            raise RecipeError(f"training_hyperparams.initial_lr: rates must be numbers, got {rates}.") from None
    raise RecipeError(f"training_hyperparams.initial_lr must be a number or a mapping, got {initial_lr!r}.")


def _bias_and_norm_parameters(model: torch.nn.Module) -> set[int]:
    ids = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, _NORM_TYPES):
                ids.add(id(param))
    return ids


def _import_optimizer(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"training_hyperparams.optimizer: cannot import '{path}': {err}") from None
