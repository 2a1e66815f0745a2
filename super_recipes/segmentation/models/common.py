"""Blocks and conventions shared by the segmentation architectures (DDRNet, STDC, PP-LiteSeg).

:class:`SegmentationModel` is the base of every registered segmentation model; it owns the output convention of
:mod:`super_recipes.segmentation`:

* ``model.train()``: the main logits ``[B, C, H, W]`` at the input resolution, or, with ``use_aux_heads``, the
  tuple ``(main, *aux)`` whose elements are named, in order, by ``model.output_names``; auxiliary logits stay at
  the resolution they are computed at (losses resize them to the mask);
* ``model.eval()``, and whenever the model is traced or exported (``torch.jit.trace``, ONNX, ``torch.export``):
  the main logits alone, upsampled (bilinear) to the input size. ``torch.compile`` in training mode keeps the
  tuple: compiling a training step must not drop its auxiliary losses.

Every class-count-dependent module (the main head and the auxiliary heads) lives under ``model.heads``, so that
``head_prefix == "heads"`` covers them all: ``checkpoint_params.load_backbone: true`` loads everything else, and a
checkpoint with another ``num_classes`` fine-tunes (see :mod:`super_recipes.models.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.segmentation.predict_mixin import SegmentationPredictMixin

__all__ = ["CITYSCAPES_FRAME", "ConvBNReLU", "PooledBatchNorm2d", "SegHead", "SegmentationModel", "check_arch_params",
           "init_weights", "is_exporting", "resize_to", "scaled"]

# The Cityscapes frame (height, width) that the published "Seg50"/"Seg75" names are fractions of.
CITYSCAPES_FRAME = (1024, 2048)


def is_exporting() -> bool:
    """True while the model is traced or exported, when only the main logits may come out."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(exporting is not None and exporting())


def resize_to(x: Tensor, size: Sequence[int] | torch.Size, mode: str = "bilinear") -> Tensor:
    """``x`` resized to ``size`` (height, width); bilinear without corner alignment unless ``mode`` says
    otherwise. Always to an explicit size, never by a scale factor, so that odd input sizes line up."""
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def scaled(channels: int, base: int, published_base: int = 64) -> int:
    """``channels`` (a published width at ``published_base``) scaled to ``base``, at least 1."""
    return max(1, round(channels * base / published_base))


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for globally pooled (1x1) features, as in the attention and pyramid-pooling branches.

    A training batch of one image leaves a single value per channel, which plain BatchNorm refuses (and a last
    batch of one would crash an epoch): then this one normalises with its running statistics, unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ConvBNReLU(nn.Module):
    """Convolution (no bias: BN follows) + BatchNorm + optional ReLU, with "same" padding. ``pooled`` marks a
    block that runs on globally pooled features (:class:`PooledBatchNorm2d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, relu: bool = True, pooled: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = (PooledBatchNorm2d if pooled else nn.BatchNorm2d)(out_channels)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SegHead(nn.Module):
    """3x3 ConvBNReLU to ``mid_channels`` then a 1x1 classifier (no bias) to ``num_classes`` logits: the head of
    STDC-Seg (BiSeNet's output block) and of PP-LiteSeg."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.conv(x))


def check_arch_params(architecture: str, *, num_classes: Any, in_channels: Any, use_aux_heads: Any,
                      **widths: Any) -> None:
    """Refuse bad ``arch_params`` with a RecipeError naming the key, before any layer is built.

    ``widths`` maps argument names to ``(value, minimum)`` or ``(value, minimum, "even")``.
    """
    def refuse(key: str, value: Any, expected: str) -> None:
        raise RecipeError(f"Bad arch_params.{key} for '{architecture}': expected {expected}, got {value!r}.",
                          key=f"arch_params.{key}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(num_classes) or num_classes < 1:
        refuse("num_classes", num_classes, "an integer >= 1 (1 for binary segmentation: one logit per pixel)")
    if not is_int(in_channels) or in_channels < 1:
        refuse("in_channels", in_channels, "an integer >= 1")
    if not isinstance(use_aux_heads, bool):
        refuse("use_aux_heads", use_aux_heads, "true or false")
    for key, (value, minimum, *rule) in widths.items():
        if not is_int(value) or value < minimum:
            refuse(key, value, f"an integer >= {minimum}")
        if rule == ["even"] and value % 2:
            refuse(key, value, "an even integer (the blocks halve it)")


class SegmentationModel(SegmentationPredictMixin, nn.Module):
    """Base of the segmentation architectures: the output convention, the head bookkeeping, the published
    evaluation scale. Subclasses build ``self.backbone`` and the rest, then call :meth:`_set_heads`, and implement
    :meth:`_build_heads` and :meth:`forward_logits`.

    Attributes read by the rest of the framework:

    * ``num_classes``, ``use_aux_heads``;
    * ``head_prefix`` (``"heads"``): the class-count-dependent part, left out by ``load_backbone``;
    * ``backbone``: the feature extractor (pretrained-weight loading and per-part learning rates refer to it);
    * ``output_names``: the names of the training outputs, in tuple order (``("main",)`` without aux heads);
    * ``eval_scale``: the fraction of the 1024x2048 Cityscapes frame the published model is trained and
      evaluated at (``eval_size``, height x width), what the recipes' resize and ``predict`` use.
    """

    head_prefix = "heads"
    aux_names: tuple[str, ...] = ()  # names of the auxiliary outputs, in tuple order, set by subclasses

    def __init__(self, num_classes: int, use_aux_heads: bool, eval_scale: float):
        super().__init__()
        self.num_classes = num_classes
        self.use_aux_heads = use_aux_heads
        self.eval_scale = eval_scale
        self.class_names: list[str] | None = None
        self.processing_params: dict[str, Any] = {}

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of what training mode returns, in order: ``("main",)`` or ``("main", *aux_names)``."""
        return ("main", *self.aux_names) if self.use_aux_heads else ("main",)

    @property
    def eval_size(self) -> tuple[int, int]:
        """``(height, width)`` of the published evaluation input: ``eval_scale`` x 1024x2048."""
        return round(CITYSCAPES_FRAME[0] * self.eval_scale), round(CITYSCAPES_FRAME[1] * self.eval_scale)

    def _build_heads(self, num_classes: int) -> nn.ModuleDict:
        """The main head (``main``) and, with ``use_aux_heads``, the auxiliary ones, for ``num_classes``."""
        raise NotImplementedError

    def forward_logits(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        """Main logits at the head's own resolution, and the auxiliary logits when ``with_aux``."""
        raise NotImplementedError

    def _set_heads(self) -> None:
        self.heads = self._build_heads(self.num_classes)
        init_weights(self.heads)

    def replace_head(self, num_classes: int) -> None:
        """New, freshly initialised heads for ``num_classes`` (fine-tuning on another label set); everything
        else keeps its weights."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise RecipeError(f"replace_head: num_classes must be an integer >= 1, got {num_classes!r}.")
        device = next(self.parameters()).device
        self.num_classes = num_classes
        self._set_heads()
        self.heads.to(device)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        with_aux = self.training and self.use_aux_heads and not is_exporting()
        main, aux = self.forward_logits(x, with_aux)
        main = resize_to(main, x.shape[-2:])
        return (main, *aux) if with_aux else main


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, as for ReLU nets), BatchNorm at identity, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
