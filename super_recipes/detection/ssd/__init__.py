"""SSD-Lite detectors: MobileNetV2 backbone, SSD-Lite heads, default boxes, SSDLoss, SSDPostPredictCallback."""
