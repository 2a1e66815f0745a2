"""Object detection: datasets, transforms, collate functions, metrics and visualisation.

Imported only when a recipe names one of its entries (the registries load these modules on demand), so
classification runs never pay for OpenCV augmentation code or pycocotools.

Conventions shared by every module here:

* A **sample** travels through the transforms as a :class:`super_recipes.detection.sample.DetectionSample`:
  ``image`` (HWC uint8 numpy array, BGR as read by OpenCV), ``boxes`` ``[N, 4]`` float32 XYXY pixels,
  ``labels`` ``[N]`` int64 contiguous class indices, ``crowd_boxes`` / ``crowd_labels`` likewise for crowd
  regions, ``image_id``, ``original_shape`` ``(h, w)`` and the letterbox record ``scale`` and ``pad``
  (``(left, top)``) such that ``original_xy = (input_xy - pad) / scale``.
* A dataset item is ``(image, targets, extras)``: ``image`` float32 CHW tensor, ``targets`` ``[N, 5]`` float32
  array in the output format (default ``LABEL_CXCYWH``: label, cx, cy, w, h in input pixels), ``extras`` a dict
  with ``crowd_targets`` (same format), ``image_id``, ``original_shape``, ``scale``, ``pad``.
* ``DetectionCollateFN`` stacks images to ``[B, C, H, W]`` and targets to ``[N, 6]`` (batch index, label, box);
  ``CrowdDetectionCollateFN`` also returns the extras as a dict of batched tensors (``crowd_targets`` ``[M, 6]``,
  ``image_ids``, ``original_shapes``, ``scales``, ``pads``), the third element of the batch, which the trainer
  hands to metrics that set ``accepts_batch_extras = True``.
* Predictions after post-processing are, per image, ``[K, 6]`` tensors ``x1, y1, x2, y2, confidence, class``
  in input pixels.
"""
