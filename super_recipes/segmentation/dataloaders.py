"""Named segmentation dataloaders (recipe keys ``train_dataloader`` / ``val_dataloader``).

Their defaults live in the shipped recipe group files ``recipes/dataset_params/<group>.yaml``, read by
:func:`super_recipes.data.dataloaders.from_recipe_group` exactly as for the classification and detection
loaders; what a recipe passes in ``dataset_params`` is merged on top (lists such as ``transforms`` are replaced).
``dataset: MySegmentationDataset`` there keeps the transforms and loader settings of the named loader for a
user dataset.

============================================  ====================================================
loaders                                       defaults
============================================  ====================================================
``cityscapes_train`` / ``cityscapes_val``      ``cityscapes_segmentation_dataset_params.yaml``
``pascal_voc_segmentation_train`` / ``_val``   ``pascal_voc_segmentation_dataset_params.yaml``
``coco_segmentation_train`` / ``_val``         ``coco_segmentation_dataset_params.yaml``
``shapes_segmentation_train`` / ``_val``       ``shapes_segmentation_dataset_params.yaml``
``segmentation_folder_train`` / ``_val``       ``segmentation_folder_dataset_params.yaml``
============================================  ====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch.utils.data import DataLoader

from super_recipes.data.dataloaders import from_recipe_group
from super_recipes.registry import register_dataloader


def _group_loader(group: str, split: str, name: str) -> Callable[..., DataLoader]:
    def loader(dataset_params: Mapping | None = None, dataloader_params: Mapping | None = None,
               where: str = "") -> DataLoader:
        return from_recipe_group(group, split, dataset_params, dataloader_params, where)

    loader.__name__ = loader.__qualname__ = name
    loader.__doc__ = f"Recipe loader ``{name}``; defaults: recipes/dataset_params/{group}.yaml ({split}_*_params)"
    return register_dataloader(name)(loader)


cityscapes_train = _group_loader("cityscapes_segmentation_dataset_params", "train", "cityscapes_train")
cityscapes_val = _group_loader("cityscapes_segmentation_dataset_params", "val", "cityscapes_val")
pascal_voc_segmentation_train = _group_loader("pascal_voc_segmentation_dataset_params", "train",
                                              "pascal_voc_segmentation_train")
pascal_voc_segmentation_val = _group_loader("pascal_voc_segmentation_dataset_params", "val",
                                            "pascal_voc_segmentation_val")
coco_segmentation_train = _group_loader("coco_segmentation_dataset_params", "train", "coco_segmentation_train")
coco_segmentation_val = _group_loader("coco_segmentation_dataset_params", "val", "coco_segmentation_val")
shapes_segmentation_train = _group_loader("shapes_segmentation_dataset_params", "train", "shapes_segmentation_train")
shapes_segmentation_val = _group_loader("shapes_segmentation_dataset_params", "val", "shapes_segmentation_val")
segmentation_folder_train = _group_loader("segmentation_folder_dataset_params", "train", "segmentation_folder_train")
segmentation_folder_val = _group_loader("segmentation_folder_dataset_params", "val", "segmentation_folder_val")
