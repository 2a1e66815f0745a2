"""Semantic segmentation architectures for the recipe key ``architecture`` (their keyword arguments are the
recipe's ``arch_params``). The model registry imports these modules on first lookup of one of the names.

* ``ddrnet_23``, ``ddrnet_23_slim`` (:mod:`.ddrnet`): DDRNet-23, 20.15M params at 19 classes (published 20.1M), and
  DDRNet-23-slim, 5.70M (published 5.7M); published evaluation input 1024x2048 (``eval_scale`` 1.0).
* ``stdc1_seg50``, ``stdc1_seg75``, ``stdc2_seg50``, ``stdc2_seg75`` (:mod:`.stdc`): STDC1-Seg, 8.28M, and
  STDC2-Seg, 12.31M; evaluated at 512x1024 (``eval_scale`` 0.5) or 768x1536 (0.75).
* ``pp_lite_t_seg50``, ``pp_lite_t_seg75``, ``pp_lite_b_seg50``, ``pp_lite_b_seg75`` (:mod:`.pplite_seg`):
  PP-LiteSeg-T (STDC1 encoder), 8.03M, and PP-LiteSeg-B (STDC2), 12.23M; evaluated at 512x1024 or 768x1536.

Parameter counts are of the inference model (no auxiliary heads); the STDC and PP-LiteSeg papers publish none,
so their reference counts are computed from the official layer definitions (see ``tests/test_segmentation_models.py``).

``arch_params`` of every model: ``num_classes`` (19; 1 for binary segmentation), ``use_aux_heads`` (false: build
and return the training-only heads), ``in_channels`` (3), and widths that scale the model down honestly (every
layer narrower, the same topology): ``base_channels`` (64) for STDC and PP-LiteSeg, ``planes`` (64 / 32 for slim),
``head_planes`` (128 / 64) and ``spp_planes`` (128) for DDRNet.

Outputs (:class:`~super_recipes.segmentation.models.common.SegmentationModel`): in training, the main logits
``[B, C, H, W]`` at the input size, or with ``use_aux_heads`` the tuple named by ``model.output_names``:

* DDRNet: ``(main, aux)``, ``aux`` from the high-resolution branch at 1/8;
* STDC: ``(main, aux8, aux16, detail)``, context-path logits at 1/8 and 1/16, and the one-channel detail logits
  at 1/8 for the detail loss;
* PP-LiteSeg: ``(main, aux16, aux32)``, the heads of the 1/16 and 1/32 decoder stages.

In eval mode and under tracing/export: the main logits alone at the input size. Every class-dependent module is
under ``model.heads`` (``model.head_prefix == "heads"``): ``checkpoint_params.load_backbone: true`` loads all the
rest, ``model.replace_head(num_classes)`` swaps them for fine-tuning; ``model.backbone`` is the encoder.
"""
