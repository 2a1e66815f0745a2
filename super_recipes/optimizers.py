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

import inspect
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
    """The optimizer over ``model``'s trainable parameters, grouped by ``initial_lr`` prefixes and decay.

    ``params.optimizer`` is a spec or class (built here) or, from the Python API, an optimizer instance already
    built on the model's parameters (used as is; each group's own ``lr`` is its ``initial_lr``).
    """
    if isinstance(params.optimizer, torch.optim.Optimizer):
        return _adopt_optimizer(params.optimizer, model, params)
    factory, kwargs = optimizer_factory(params)
    groups = parameter_groups(model, params.initial_lr, params.zero_weight_decay_on_bias_and_bn)
    optimizer = call_with_kwargs(
        factory, {"params": groups, "lr": groups[0]["lr"], **kwargs},
        f"optimizer {getattr(factory, '__name__', factory)}", "training_hyperparams.optimizer_params",
    )
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def optimizer_factory(params: Any) -> tuple[Any, dict[str, Any]]:
    """(optimizer class, keyword arguments) of ``optimizer`` + ``optimizer_params``."""
    spec = params.optimizer
    if inspect.isclass(spec):
        factory, kwargs = spec, {}
    else:
        factory, kwargs = split_spec(spec, OPTIMIZERS, "training_hyperparams.optimizer")
    return factory, {**kwargs, **dict(params.optimizer_params or {})}


def check_optimizer(params: Any) -> None:
    """Refuse bad ``optimizer_params`` before the model exists: the optimizer is built once on a stand-in
    parameter, so unknown arguments, wrong types and out-of-range values (``momentum: -1``) surface now."""
    if isinstance(params.optimizer, torch.optim.Optimizer):
        _refuse_settings_for_instance(params)
        return
    factory, kwargs = optimizer_factory(params)
    rates = _rates_by_prefix(params.initial_lr)
    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    call_with_kwargs(factory, {"params": stand_in, "lr": rates["default"], **kwargs},
                     f"optimizer {getattr(factory, '__name__', factory)}", "training_hyperparams.optimizer_params")


def _adopt_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, params: Any) -> torch.optim.Optimizer:
    _refuse_settings_for_instance(params)
    own = {id(p) for p in model.parameters()}
    foreign = sum(1 for group in optimizer.param_groups for p in group["params"] if id(p) not in own)
    if foreign:
        raise RecipeError(
            f"training_hyperparams.optimizer: {foreign} parameter(s) of the given {type(optimizer).__name__} are not "
            "parameters of the model being trained (was it built on another model, or on a copy?). Build it on "
            "model.parameters() of the model you pass to train().")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def _refuse_settings_for_instance(params: Any) -> None:
    given = getattr(params, "given_keys", frozenset())
    ignored = [key for key in ("optimizer_params", "zero_weight_decay_on_bias_and_bn")
               if key in given and getattr(params, key)]
    optimizer = params.optimizer
    rates = {group["lr"] for group in optimizer.param_groups}
    if "initial_lr" in given and rates != {params.initial_lr}:
        ignored.append(f"initial_lr (the optimizer's rates are {sorted(rates)})")
    if ignored:
        raise RecipeError(
            f"training_hyperparams.optimizer is an optimizer instance, already configured, so these keys would "
            f"be ignored: {', '.join(ignored)}. Set them when you build the optimizer, or pass its class "
            f"({type(optimizer).__name__}) instead of an instance.")


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


