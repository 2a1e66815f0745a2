"""The ImageNet-21K-P backbones by the names of MIIL's model table (``tresnet_m``, ``tresnet_l``,
``mixer_b16_224``, ``mobilenetv3_large_100``, ``vit_base_patch16_224``; ``resnet50``), with
``pretrained_weights: imagenet21k`` for the published ImageNet-21K-P weights.

These names build the architecture the published weights belong to, through timm (the ``timm`` extra), with the
21K-P class count (11221, the fall11 semantic tree) as default ``num_classes``. Two of them are not timm's
model of the same name: the table's TResNet-L row is TResNet-L **V2** (timm ``tresnet_v2_l``), and its ViT-B/16
has no bias in the attention projections (timm ``vit_base_patch16_224_miil``). ``timm/<name>`` always means
timm's own model of that name.

``resnet50`` stays torchvision's network (timm's ResNet-50 has the same layout and state-dict names); its
21K-P file is published by MIIL, not in timm's pretrained configurations, so it is registered here by URL.
OFA-595 (``ofa_flops_595m_s``) is not in timm, hence not here: see ``RETIRED_OR_ELSEWHERE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from super_recipes.models.pretrained import register_pretrained_weights
from super_recipes.models.timm_models import IMAGENET21K_ALIAS, build_timm_factory
from super_recipes.registry import register_model

IMAGENET21K_P_CLASSES = 11221


@dataclass(frozen=True)
class Imagenet21kBackbone:
    """A row of MIIL's ImageNet-21K-P table: where its weights live and what was published for it."""

    label: str  # the table's own row name
    timm_architecture: str
    timm_tag: str  # the 21K-P weights; ``<tag>_ft_in1k`` is their ImageNet-1k fine-tune
    top1_21k_p: float  # ImageNet-21K-P semantic top-1 [%]
    top1_in1k: float  # ImageNet-1k top-1 after fine-tuning [%]
    v100_max_batch: int  # the table's throughput columns, measured on a V100 at 90% of the maximal batch
    v100_train_img_s: int
    v100_infer_img_s: int


IMAGENET21K_P: dict[str, Imagenet21kBackbone] = {
    "mobilenetv3_large_100": Imagenet21kBackbone("MobilenetV3_large_100", "mobilenetv3_large_100", "miil_in21k",
                                                 73.1, 78.0, 488, 1210, 5980),
    "tresnet_m": Imagenet21kBackbone("TResNet-M", "tresnet_m", "miil_in21k", 76.4, 83.1, 520, 670, 2970),
    "tresnet_l": Imagenet21kBackbone("TResNet-L (V2)", "tresnet_v2_l", "miil_in21k", 76.7, 83.9, 240, 300, 1460),
    "mixer_b16_224": Imagenet21kBackbone("Mixer-B-16", "mixer_b16_224", "miil_in21k", 76.3, 82.3, 160, 420, 1420),
    "vit_base_patch16_224": Imagenet21kBackbone("ViT-B-16", "vit_base_patch16_224_miil", "in21k",
                                                77.6, 84.4, 160, 340, 1140),
}
# Published beside the others in the same table, for the torchvision-layout ResNet-50.
RESNET50_21K_P = Imagenet21kBackbone("ResNet50", "resnet50", "miil_in21k", 75.6, 82.0, 320, 720, 2760)
RESNET50_21K_P_URL = ("https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/ImageNet_21K_P/models/"
                      "resnet50_miil_21k.pth")


def timm_weights_of(name: str) -> tuple[str, str] | None:
    """``(timm architecture, 21K-P tag)`` of a table name; None for other names."""
    row = IMAGENET21K_P.get(name)
    return (row.timm_architecture, row.timm_tag) if row else None


def imagenet21k_tag(name: str, tag: str) -> str:
    """A table name's ``pretrained_weights`` value in timm's terms (``imagenet21k`` -> ``miil_in21k``,
    ``imagenet21k_ft_in1k`` -> ``miil_in21k_ft_in1k``); other values pass through."""
    row = IMAGENET21K_P[name]
    lowered = tag.lower()
    if lowered == IMAGENET21K_ALIAS:
        return row.timm_tag
    if lowered == f"{IMAGENET21K_ALIAS}_ft_in1k":
        return f"{row.timm_tag}_ft_in1k"
    return tag


for _name, _row in IMAGENET21K_P.items():
    register_model(_name)(build_timm_factory(_row.timm_architecture, IMAGENET21K_P_CLASSES))
register_pretrained_weights("resnet50", IMAGENET21K_ALIAS, RESNET50_21K_P_URL)
