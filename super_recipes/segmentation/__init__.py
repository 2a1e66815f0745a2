"""Semantic segmentation: datasets, joint transforms, models (DDRNet, PP-LiteSeg, STDC), losses, metrics,
visualisation and prediction.

Imported only when a recipe names one of its entries (``registry_modules.py`` tells the registries which modules
to load), so classification and detection runs never pay for it.

Conventions shared by every module here:

* A dataset item is ``(image, mask)``: ``image`` a float32 ``[3, H, W]`` tensor (after the transforms), ``mask``
  an int64 ``[H, W]`` tensor of class indices where ``ignore_index`` (default 255) marks pixels that count for
  nothing. The default collate function stacks them to ``[B, 3, H, W]`` and ``[B, H, W]``.
* Binary segmentation uses one output channel (``num_classes: 1``, a logit per pixel) and masks of 0/1 (and
  ``ignore_index``).
* A model returns, in training mode, its main logits ``[B, C, H, W]`` at the input resolution, or, with auxiliary
  heads (``use_aux_heads: true``), a tuple ``(main, aux1, ...)`` whose auxiliary logits may be smaller; in eval
  mode and under tracing, the main logits alone. Losses and metrics accept either form (main output first) and
  resize auxiliary logits to the mask themselves.
* Losses return ``(loss, items)`` and name their items with ``component_names``.
"""
