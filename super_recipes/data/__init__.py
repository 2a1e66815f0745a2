"""Datasets, transforms, collate functions and dataloaders that recipes name by string.

* :mod:`super_recipes.data.shapes` - the built-in offline ``ShapesClassificationDataset``;
* :mod:`super_recipes.data.torchvision_datasets` - ``Cifar10``, ``Cifar100`` and ``ImageFolderDataset``;
* :mod:`super_recipes.data.transforms` - ``build_transforms`` and transforms torchvision lacks (``ToFloatTensor``);
* :mod:`super_recipes.data.collate` - collate functions for ``dataloader_params.collate_fn``;
* :mod:`super_recipes.data.dataloaders` - ``get(name, dataset_params, dataloader_params)`` and the named loaders.

Nothing is imported here so that ``import super_recipes`` stays cheap; the registries import these modules on
first lookup.
"""
