"""Regularising augmentations of the ImageNet recipes: MixUp/CutMix as a collate function
(``dataloader_params.collate_fn``) and ``RandomErase``, random erasing with noise as a transform.

``collate_fn: {MixUpCutMixCollate: {num_classes: 1000, mixup_alpha: 0.2, cutmix_alpha: 1.0}}`` stacks a batch as
``default_collate`` does, then mixes it with ``torchvision.transforms.v2.MixUp`` or ``v2.CutMix`` (one of the two
per batch, CutMix with probability ``switch_prob``), as timm's ``Mixup`` in batch mode and SuperGradients'
``CollateMixup`` do (the published ResNet-50 and ViT recipes: mixup_alpha 0.2, cutmix_alpha 1.0, switch_prob 0.5,
prob 1.0). Each image is mixed with its neighbour in the batch (torchvision pairs sample i with i-1).

Labels come out as soft targets ``[B, num_classes]`` (float). The losses and metrics of this package take them:
``torch.nn.CrossEntropyLoss`` accepts class probabilities as targets, with ``label_smoothing`` applied on top
(equivalent to timm's smoothing inside the mix, since both are linear in the one-hot targets), and ``Accuracy`` /
``Top5`` score against the argmax of a soft target. Only put it on the training loader: validation keeps integer
labels. Mixing in the loader's worker processes keeps the main process free for the GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from super_recipes.errors import RecipeError
from super_recipes.registry import register_collate_function, register_transform


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise RecipeError(f"{name} must lie in [0, 1], got {value}.")
    return value


@register_collate_function
class MixUpCutMixCollate:
    """Collate, then MixUp or CutMix the batch (recipe ``collate_fn: MixUpCutMixCollate``).

    :param num_classes: width of the soft targets (the model's ``num_classes``; 1000 for ImageNet-1k).
    :param mixup_alpha: Beta(alpha, alpha) concentration of MixUp's ratio; 0 switches MixUp off.
    :param cutmix_alpha: Beta(alpha, alpha) concentration of CutMix's area ratio; 0 switches CutMix off.
    :param prob: probability that a batch is mixed at all (else it keeps one-hot targets).
    :param switch_prob: probability of CutMix rather than MixUp when both are on.
    :param label_smoothing: smoothing of the targets done here (``t (1 - e) + e / C``); leave it 0 when the loss
        smooths (``criterion_params.label_smoothing``), which gives the same targets.

    Published use: SuperGradients' ImageNet ResNet-50 (79.47% top-1) and ViT-B/16 (84.15%) recipes,
    mixup_alpha 0.2, cutmix_alpha 1.0, smoothing 0.1.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise RecipeError(f"MixUpCutMixCollate: num_classes must be an integer >= 2 (the model's class "
                              f"count), got {num_classes!r}.")
        if float(mixup_alpha) < 0 or float(cutmix_alpha) < 0:
            raise RecipeError(f"MixUpCutMixCollate: mixup_alpha and cutmix_alpha must be >= 0, got "
                              f"{mixup_alpha} and {cutmix_alpha}.")
        if float(mixup_alpha) == 0 and float(cutmix_alpha) == 0:
            raise RecipeError("MixUpCutMixCollate: mixup_alpha and cutmix_alpha are both 0, so nothing would be "
                              "mixed; use DefaultCollateFN (or leave collate_fn out) instead.")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob = _check_fraction("MixUpCutMixCollate: prob", prob)
        self.switch_prob = _check_fraction("MixUpCutMixCollate: switch_prob", switch_prob)
        self.label_smoothing = _check_fraction("MixUpCutMixCollate: label_smoothing", label_smoothing)
        self._mixup: Any = None  # torchvision transforms, built on first use: importing torchvision takes ~1 s
        self._cutmix: Any = None

    def _build(self) -> None:
        from torchvision.transforms import v2

        if self.mixup_alpha > 0:
            self._mixup = v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes)
        if self.cutmix_alpha > 0:
            self._cutmix = v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a collated batch: ``images [B, C, H, W]``, integer ``labels [B]`` -> (images, soft targets)."""
        if self._mixup is None and self._cutmix is None:
            self._build()
        if labels.is_floating_point() or labels.ndim != 1:
            raise RecipeError(f"MixUpCutMixCollate expects integer class labels of shape [B], got "
                              f"{tuple(labels.shape)} {labels.dtype}; it must be the only mixing step.")
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise RecipeError(f"MixUpCutMixCollate: label {int(labels.max())} >= num_classes {self.num_classes}; "
                              f"set num_classes to the model's class count.")
        # torch's generator draws the choices (seeded per worker by the DataLoader), as torchvision does inside.
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            images, targets = images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        else:
            use_cutmix = self._mixup is None or (self._cutmix is not None and float(torch.rand(())) < self.switch_prob)
            images, targets = (self._cutmix if use_cutmix else self._mixup)(images, labels)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return images, targets

    def __call__(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(batch)[:2]
        if not images.is_floating_point():
            # MixUp of uint8 images would round; the pipelines of this package end in ToFloatTensor anyway.
            images = images.float()
        return self.mix(images, labels)

    def __repr__(self) -> str:
        return (f"MixUpCutMixCollate(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob}, "
                f"label_smoothing={self.label_smoothing})")


@register_transform
class RandomErase:
    """Random erasing of a normalised CHW float image (recipe ``transforms: [..., {RandomErase: {...}}]``).

    ``torchvision.transforms.v2.RandomErasing`` with SuperGradients' argument names: ``probability`` and
    ``value``, where ``value: random`` fills the box with per-pixel standard-normal noise (the published
    EfficientNet-B0, RegNetY and MobileNetV2 recipes: probability 0.2, value random; Zhong et al. 2020) and a
    number fills it with that value. ``scale`` / ``ratio``: the box's area fraction and aspect-ratio ranges.
    (``RandomErasing`` from v2 also resolves by name, but only with a numeric ``value``.)
    """

    def __init__(self, probability: float = 0.5, value: float | str = "random",
                 scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)):
        if value != "random" and (isinstance(value, (str, bool)) or not isinstance(value, (int, float))):
            raise RecipeError(f"RandomErase: value must be a number or 'random', got {value!r}.")
        self.probability = _check_fraction("RandomErase probability", probability)
        self.value, self.scale, self.ratio = value, tuple(scale), tuple(ratio)
        from torchvision.transforms import v2

        self._erase = v2.RandomErasing(p=self.probability, scale=self.scale, ratio=self.ratio, value=value)

    def __call__(self, image: Any, *rest: Any) -> Any:
        image = self._erase(image)
        return (image, *rest) if rest else image

    def __repr__(self) -> str:
        return (f"RandomErase(probability={self.probability}, value={self.value!r}, scale={self.scale}, "
                f"ratio={self.ratio})")
