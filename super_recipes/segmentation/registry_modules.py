"""What the segmentation task registers, by registry: imported only when a recipe names one of these entries."""

REGISTRY_MODULES = {
    "models": ["super_recipes.segmentation.models.stdc", "super_recipes.segmentation.models.ddrnet",
               "super_recipes.segmentation.models.pplite_seg"],
    "losses": ["super_recipes.segmentation.losses"],
    "metrics": ["super_recipes.segmentation.metrics"],
    "callbacks": ["super_recipes.segmentation.visualization"],
    "datasets": ["super_recipes.segmentation.datasets", "super_recipes.segmentation.dataset_formats",
                 "super_recipes.segmentation.synthetic"],
    "dataloaders": ["super_recipes.segmentation.dataloaders"],
    "transforms": ["super_recipes.segmentation.transforms"],
}
