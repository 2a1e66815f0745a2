"""PP-YOLOE detectors: CSPResNet backbone, CSP-PAN neck, efficient task-aligned head, PPYoloELoss."""
