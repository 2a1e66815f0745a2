"""Initial weights: the recipe group ``checkpoint_params`` and the loading keywords of ``models.get``.

Rules (the README's "Loading weights" section says the same):

* A checkpoint written by SuperGradients is recognised and its names translated to ours
  (:mod:`super_recipes.models.sg_checkpoints`; its ``ema_net`` is preferred, as SuperGradients does).
* The weights come from ``net`` of a super_recipes checkpoint, ``ema_net`` with ``load_ema_as_net``, or a
  plain state dict (also nested under ``state_dict`` / ``model`` / ``model_state_dict``). DDP ``module.`` and
  ``torch.compile`` ``_orig_mod.`` prefixes are stripped. Files are read with ``weights_only=True``.
* ``strict_load: on`` -- names and shapes must match, else a RecipeError lists the differences. One exception,
  for fine-tuning: when the only differences are shapes inside the classification head (the checkpoint has
  another class count), everything else is loaded and the head keeps its initialization; that is reported.
* ``strict_load: off`` -- load every tensor whose name and shape match; report the rest. Matching nothing is an
  error (it always means the wrong architecture or file).
* ``strict_load: no_key_matching`` -- pair tensors by position (``num_batches_tracked`` counters left out),
  for weights of the same architecture written by another implementation; every shape must line up (the head
  exception above applies).
* ``load_backbone: true`` -- the head is neither loaded nor required; in ``no_key_matching`` the checkpoint's
  surplus trailing tensors (its head) are ignored.

The head is ``model.head_prefix`` (a string, or a method returning one) when the model defines it, else the
last ``nn.Linear``: ``fc`` for ResNets, ``classifier.1`` for EfficientNet, ``heads.head`` for ViT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import to_plain

logger = logging.getLogger("super_recipes")

STRICT_MODES = ("on", "off", "no_key_matching")
# Keys of the recipe group ``checkpoint_params`` (recipes/checkpoint_params/default_checkpoint_params.yaml).
CHECKPOINT_PARAMS_KEYS = ("checkpoint_path", "pretrained_weights", "strict_load", "load_backbone",
                          "load_ema_as_net", "load_weights_only")
# Where other frameworks keep the model's state dict inside a checkpoint dict, in the order tried after ``net``.
NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
REPORT_ATTRIBUTE = "_super_recipes_load_report"
_COUNTER_SUFFIX = "num_batches_tracked"  # a BatchNorm step counter, not a weight: never worth an error


@dataclass
class LoadReport:
    """What a weights load did, key by key (model keys unless said otherwise). Attached to the model as
    ``model._super_recipes_load_report`` and logged to the ``super_recipes`` logger."""

    source: str
    strict_load: str
    model_tensors: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not in the checkpoint: initial values kept
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # ckpt, model
    skipped: list[str] = field(default_factory=list)  # the head, with load_backbone
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model
    ignored: list[str] = field(default_factory=list)  # checkpoint keys of its head, with load_backbone
    # checkpoint keys of modules the model was built without (GoogLeNet's auxiliary heads with aux_logits=False)
    left_out: list[str] = field(default_factory=list)
    head_prefix: str | None = None

    @property
    def not_loaded(self) -> list[str]:
        """Model keys that kept their initial values."""
        return [*self.missing, *self.mismatched, *self.skipped]

    @property
    def head_reinitialized(self) -> bool:
        """True when only the head differs in shape (another class count): the fine-tuning case."""
        return bool(self.mismatched) and all(_under(k, self.head_prefix) for k in self.mismatched)

    def summary(self) -> str:
        """A few lines for the log: counts, and the first names of everything that was not loaded."""
        head = (f"Loaded {len(self.loaded)}/{self.model_tensors} tensors from {self.source} "
                f"(strict_load={self.strict_load})")
        details = self.details()
        if details and not self.not_loaded:
            return f"{head}:\n{details}"
        return f"{head}; the other model tensors keep their initial values:\n{details}" if details else head + "."

    def details(self) -> str:
        """One line per kind of difference, with counts and the first few names."""
        lines = []
        if self.mismatched:
            shapes = [f"{k} {list(c)} vs model {list(m)}" for k, (c, m) in self.mismatched.items()]
            why = ("the head has another class count in the checkpoint (fine-tuning)" if self.head_reinitialized
                   else "another shape in the checkpoint")
            lines.append(f"  {_names(shapes)}: {why}")
        if self.missing:
            lines.append(f"  {_names(self.missing)}: not in the checkpoint")
        if self.skipped:
            lines.append(f"  {_names(self.skipped)}: the head ({self.head_prefix}), left out by load_backbone")
        if self.unexpected:
            lines.append(f"  {_names(self.unexpected)}: only in the checkpoint, ignored")
        if self.ignored:
            lines.append(f"  {_names(self.ignored)}: the checkpoint's head, ignored (load_backbone)")
        if self.left_out:
            lines.append(f"  {_names(self.left_out)}: modules this model was built without, ignored")
        return "\n".join(lines)


def _under(key: str, prefix: str | None) -> bool:
    return bool(prefix) and (key == prefix or key.startswith(f"{prefix}."))


def _names(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return f"{len(items)} ({shown}{f' and {len(items) - limit} more' if len(items) > limit else ''})"


def normalize_strict_load(value: Any) -> str:
    """``checkpoint_params.strict_load`` -> ``on`` / ``off`` / ``no_key_matching`` (true/false mean on/off)."""
    value = getattr(value, "value", value)  # a StrictLoad-like enum
    if value is None or isinstance(value, bool):
        return "off" if value is False else "on"
    text = str(value).strip().lower()
    aliases = {"true": "on", "false": "off", **{mode: mode for mode in STRICT_MODES}}
    if text not in aliases:
        raise RecipeError(f"checkpoint_params.strict_load={value!r} is not one of {', '.join(STRICT_MODES)} "
                          f"(true/false mean on/off). {did_you_mean(text, STRICT_MODES)}".rstrip())
    return aliases[text]


def head_prefix(model: nn.Module) -> str | None:
    """The classification head's state-dict prefix: ``model.head_prefix`` if defined, else the last Linear."""
    declared = getattr(model, "head_prefix", None)
    if callable(declared):
        declared = declared()
    if isinstance(declared, str):
        return declared
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]
    return linears[-1] if linears else None


def state_dict_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint",
                               load_ema_as_net: bool = False) -> dict[str, torch.Tensor]:
    """The model weights (tensors only) inside a loaded checkpoint dict (see the module doc)."""
    if load_ema_as_net:
        if not isinstance(checkpoint.get("ema_net"), Mapping):
            raise RecipeError(f"load_ema_as_net is set but {source} has no 'ema_net' (it holds: "
                              f"{', '.join(map(str, list(checkpoint)[:8]))}); train with ema: true or unset it.")
        weights: Mapping[str, Any] = checkpoint["ema_net"]
    else:
        nested = next((checkpoint[k] for k in ("net", *NESTED_STATE_KEYS) if isinstance(checkpoint.get(k), Mapping)),
                      None)
        weights = nested if nested is not None else checkpoint
    tensors = {str(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise RecipeError(f"{source} holds no tensors where weights were expected (top-level keys: "
                          f"{', '.join(map(str, list(checkpoint)[:8]))}).")
    return tensors


def _strip_wrapper_prefixes(ckpt: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    # Twice through: DDP around a compiled model writes ``module._orig_mod.``. A prefix the model's own keys
    # also carry is a real submodule name and stays.
    for prefix in WRAPPER_PREFIXES * 2:
        if all(k.startswith(prefix) for k in ckpt) and not all(k.startswith(prefix) for k in own):
            ckpt = {k[len(prefix):]: v for k, v in ckpt.items()}
    return ckpt


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict_load: Any = "on",
                         load_backbone: bool = False, source: str = "state dict") -> LoadReport:
    """Copy ``state_dict`` into ``model`` under the rules of the module doc; log, attach and return the report."""
    from super_recipes.callbacks.averaging import unwrap_model

    mode, target = normalize_strict_load(strict_load), unwrap_model(model)
    own = target.state_dict()
    head = head_prefix(target)
    if load_backbone and head is None:
        raise RecipeError(f"load_backbone: cannot tell the head of {type(target).__name__} (it has no nn.Linear); "
                          "give the model a `head_prefix` attribute naming the head module.")
    report = LoadReport(source, mode, len(own), head_prefix=head)
    pair = _pair_by_position if mode == "no_key_matching" else _pair_by_name
    ckpt = _strip_wrapper_prefixes({str(k): v for k, v in state_dict.items()}, own)
    # A model may declare checkpoint modules it has no place for (``checkpoint_prefixes_without_place``): optional
    # parts left out at build time, whose published weights are not an error.
    absent = tuple(getattr(target, "checkpoint_prefixes_without_place", ()))
    report.left_out = [k for k in ckpt if any(_under(k, prefix) for prefix in absent)]
    ckpt = {k: v for k, v in ckpt.items() if k not in set(report.left_out)}
    selected = pair(own, ckpt, report, partial(_under, prefix=head) if load_backbone else None)
    report.loaded = list(selected)

    missing = [k for k in report.missing if not k.endswith(_COUNTER_SUFFIX)]
    if mode == "off" and not selected:
        raise RecipeError(f"Nothing in {source} matches {type(target).__name__} by name and shape: wrong file or "
                          f"architecture?\n{report.details()}")
    if mode != "off" and (missing or report.unexpected or (report.mismatched and not report.head_reinitialized)):
        raise RecipeError(f"Cannot load {source} into {type(target).__name__} with strict_load={mode} "
                          f"({len(selected)} of {len(own)} model tensors match):\n{report.details()}\n"
                          "strict_load=off loads what matches and reports the rest; no_key_matching loads by "
                          "position when only the names differ; load_backbone=true leaves the head out.")
    target.load_state_dict(selected, strict=False)
    if report.mismatched or report.missing or report.unexpected:
        logger.warning(report.summary())
    else:
        logger.info(report.summary())
    setattr(model, REPORT_ATTRIBUTE, report)
    return report


def _pair_by_name(own: dict[str, torch.Tensor], ckpt: dict[str, torch.Tensor], report: LoadReport,
                  skip: Callable[[str], bool] | None) -> dict[str, torch.Tensor]:
    selected = {}
    for key, tensor in own.items():
        if skip and skip(key):
            report.skipped.append(key)
        elif key not in ckpt:
            report.missing.append(key)
        elif ckpt[key].shape != tensor.shape:
            report.mismatched[key] = (tuple(ckpt[key].shape), tuple(tensor.shape))
        else:
            selected[key] = ckpt[key]
    report.ignored = [k for k in ckpt if skip and skip(k)]
    report.unexpected = [k for k in ckpt if k not in own and not (skip and skip(k))]
    return selected


def _pair_by_position(own: dict[str, torch.Tensor], ckpt: dict[str, torch.Tensor], report: LoadReport,
                      skip: Callable[[str], bool] | None) -> dict[str, torch.Tensor]:
    report.skipped = [k for k in own if skip and skip(k)]
    model_keys = [k for k in own if not k.endswith(_COUNTER_SUFFIX) and not (skip and skip(k))]
    ckpt_keys = [k for k in ckpt if not k.endswith(_COUNTER_SUFFIX)]
    if len(ckpt_keys) < len(model_keys) or (len(ckpt_keys) > len(model_keys) and not skip):
        raise RecipeError(f"strict_load=no_key_matching: {report.source} has {len(ckpt_keys)} tensors, the model "
                          f"{len(model_keys)}{' outside its head' if skip else ''}; they cannot be paired by "
                          "position.")
    selected = {}
    for i, (mine, theirs) in enumerate(zip(model_keys, ckpt_keys[: len(model_keys)], strict=True)):
        if ckpt[theirs].shape == own[mine].shape:
            selected[mine] = ckpt[theirs]
            continue
        report.mismatched[mine] = (tuple(ckpt[theirs].shape), tuple(own[mine].shape))
        if not _under(mine, report.head_prefix):
            raise RecipeError(f"strict_load=no_key_matching: the shapes of {report.source} do not line up with "
                              f"the model at tensor {i}: model {mine} {list(own[mine].shape)}, checkpoint "
                              f"{theirs} {list(ckpt[theirs].shape)}.")
    report.ignored = ckpt_keys[len(model_keys):]  # only with load_backbone: the checkpoint's head
    # BatchNorm counters are paired among themselves when both sides have the same number, else left alone.
    own_counters = [k for k in own if k.endswith(_COUNTER_SUFFIX) and not (skip and skip(k))]
    ckpt_counters = [k for k in ckpt if k.endswith(_COUNTER_SUFFIX)]
    if len(own_counters) == len(ckpt_counters):
        selected.update({mine: ckpt[theirs] for mine, theirs in zip(own_counters, ckpt_counters, strict=True)})
    else:
        report.missing = own_counters
    return selected


def load_weights(model: nn.Module, checkpoint_path: str | Path, strict_load: Any = "on", load_backbone: bool = False,
                 load_ema_as_net: bool = False) -> LoadReport:
    """Load a checkpoint file into ``model`` (``checkpoint_params.checkpoint_path`` and its siblings)."""
    from super_recipes.engine.checkpoints import load_checkpoint
    from super_recipes.models import sg_checkpoints

    checkpoint = load_checkpoint(checkpoint_path)
    # A file written by SuperGradients: its module names are translated to ours first.
    if sg_checkpoints.is_sg_checkpoint(checkpoint):
        return sg_checkpoints.load_sg_checkpoint(model, checkpoint, str(checkpoint_path), strict_load, load_backbone,
                                                 load_ema_as_net)
    weights = state_dict_from_checkpoint(checkpoint, str(checkpoint_path), load_ema_as_net)
    return load_state_dict_into(model, weights, strict_load, load_backbone, str(checkpoint_path))


def load_initial_weights(model: nn.Module, checkpoint_params: Any, architecture: str | None = None
                         ) -> LoadReport | None:
    """Apply the recipe group ``checkpoint_params`` to a freshly built model; None when it names no weights.

    ``architecture`` (the recipe key) is needed for ``pretrained_weights``. ``load_weights_only`` is accepted
    and has no effect here: initial weights are always weights only (it matters for resuming).
    """
    params = _plain(checkpoint_params)
    unknown = [k for k in params if k not in CHECKPOINT_PARAMS_KEYS]
    if unknown:
        hints = " ".join(did_you_mean(k, CHECKPOINT_PARAMS_KEYS) for k in unknown).strip()
        raise RecipeError(f"Unknown key(s) checkpoint_params.{', '.join(unknown)}. {hints} Valid keys: "
                          f"{', '.join(CHECKPOINT_PARAMS_KEYS)}".replace("  ", " "))
    strict = normalize_strict_load(params.get("strict_load"))
    backbone, ema = _flag(params, "load_backbone"), _flag(params, "load_ema_as_net")
    path, pretrained = params.get("checkpoint_path"), params.get("pretrained_weights")
    if path and pretrained:
        raise RecipeError("checkpoint_params: set checkpoint_path or pretrained_weights, not both.")
    if pretrained:
        if ema:
            raise RecipeError("checkpoint_params.load_ema_as_net applies to checkpoint_path, not pretrained_weights.")
        from super_recipes.models.pretrained import load_pretrained_weights

        return load_pretrained_weights(model, architecture or "", str(pretrained), strict, backbone)
    return load_weights(model, path, strict, backbone, ema) if path else None


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise RecipeError(f"checkpoint_params.{key} must be true or false, got {value!r}.")


def _plain(params: Any) -> dict[str, Any]:
    params = {} if params is None else to_plain(params)
    if not isinstance(params, Mapping):
        raise RecipeError(f"checkpoint_params must be a mapping, got {params!r}.")
    return dict(params)
