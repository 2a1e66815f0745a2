"""YOLO-NAS detectors: QARepVGG blocks, YOLO-NAS backbone/neck, NDFL heads; trained with PPYoloELoss."""
