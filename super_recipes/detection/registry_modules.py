"""What the detection task registers, by registry: imported only when a recipe names one of these entries."""

REGISTRY_MODULES = {
    "models": ["super_recipes.detection.yolox.model", "super_recipes.detection.customizable",
               "super_recipes.detection.ppyoloe.model", "super_recipes.detection.yolo_nas.model",
               "super_recipes.detection.ssd.model"],
    "detection_modules": ["super_recipes.detection.ppyoloe.model", "super_recipes.detection.yolo_nas.model",
                          "super_recipes.detection.ssd.model"],
    "losses": ["super_recipes.detection.yolox.loss", "super_recipes.detection.ppyoloe.loss",
               "super_recipes.detection.ssd.loss"],
    "metrics": ["super_recipes.detection.metrics"],
    "callbacks": ["super_recipes.detection.coco_evaluation", "super_recipes.detection.visualization",
                  "super_recipes.detection.yolox.stage_switch", "super_recipes.detection.ppyoloe.stage_switch"],
    "datasets": ["super_recipes.detection.datasets", "super_recipes.detection.dataset_formats",
                 "super_recipes.detection.synthetic", "super_recipes.detection.voc"],
    "dataloaders": ["super_recipes.detection.dataloaders", "super_recipes.detection.voc"],
    "transforms": ["super_recipes.detection.transforms", "super_recipes.detection.augmentations",
                   "super_recipes.detection.mixing"],
    "collate_functions": ["super_recipes.detection.collate", "super_recipes.detection.ppyoloe.collate"],
    "processing": ["super_recipes.detection.yolox.postprocess", "super_recipes.detection.multiscale",
                   "super_recipes.detection.postprocessing", "super_recipes.detection.ppyoloe.postprocess",
                   "super_recipes.detection.ssd.postprocess"],
}
