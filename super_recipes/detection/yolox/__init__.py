"""YOLOX: model family, losses, post-processing and the training stage switch."""
