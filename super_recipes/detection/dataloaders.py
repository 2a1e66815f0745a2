"""Named detection dataloaders (recipe keys ``train_dataloader`` / ``val_dataloader``).

Their defaults live in the shipped recipe group files, exactly as for the classification loaders of
:mod:`super_recipes.data.dataloaders` (whose machinery builds them): ``coco2017_train`` / ``coco2017_val`` read
``recipes/dataset_params/coco2017_detection_dataset_params.yaml``, ``shapes_detection_train`` /
``shapes_detection_val`` read ``shapes_detection_dataset_params.yaml``. What a recipe passes in
``dataset_params`` is merged on top; ``dataset: MyDetectionDataset`` there keeps the transforms and loader
settings of the named loader for a user dataset.
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
    loader.__doc__ = f"{split} loader; defaults: recipes/dataset_params/{group}.yaml ({split}_*_params)"
    return register_dataloader(name)(loader)


coco2017_train = _group_loader("coco2017_detection_dataset_params", "train", "coco2017_train")
coco2017_val = _group_loader("coco2017_detection_dataset_params", "val", "coco2017_val")
# The SuperGradients names of the same loaders (their defaults are the YOLOX setup).
coco2017_train_yolox = _group_loader("coco2017_detection_dataset_params", "train", "coco2017_train_yolox")
coco2017_val_yolox = _group_loader("coco2017_detection_dataset_params", "val", "coco2017_val_yolox")
shapes_detection_train = _group_loader("shapes_detection_dataset_params", "train", "shapes_detection_train")
shapes_detection_val = _group_loader("shapes_detection_dataset_params", "val", "shapes_detection_val")
