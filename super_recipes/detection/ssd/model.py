"""SSD-Lite MobileNetV2 for the recipe key ``architecture``: ``ssd_lite_mobilenet_v2`` (also registered under the
class name ``SSDLiteMobileNetV2``), and its parts as detection modules for ``CustomizableDetector``:
``SSDLiteMobileNetV2Backbone`` (alias ``MobileNetV2Backbone``), ``SSDInvertedResidualNeck``, ``SSDHead`` and
``DefaultBoxes``.

Two published layouts, built from the same registered parts (both at 320x320, levels 20, 10, 5, 3, 2, 1):

* the MobileNetV2 paper's SSDLite (Sandler et al. 2018, section 6.2 and Table 6: "SSDLite", 4.3M parameters,
  0.8B MAdds, 22.1 mAP on COCO test-dev), as the TensorFlow Object Detection API builds it
  (``ssdlite_mobilenet_v2_coco.config`` with the ``ssd_mobilenet_v2`` feature extractor; torchvision's
  ``ssdlite320_mobilenet_v3_large`` follows the same design on MobileNetV3): MobileNetV2 tapped at block 14's
  expansion layer (TF's ``layer_15/expansion_output``, 576 channels, stride 16) and at the 1280-channel layer
  (``layer_19``, stride 32); four stride-2 extra layers of 512, 256, 256, 128 channels, each a 1x1 conv to half
  the width, a depthwise 3x3 and a 1x1 conv, all with BN + ReLU6; depthwise-separable predictors on every level
  (depthwise 3x3 without bias + BN + ReLU6, then a 1x1 conv with bias); 3 default boxes per cell on the first
  level and 6 on the others, 2034 at 320x320 (:data:`~super_recipes.detection.ssd.anchors.SSD_LITE_TF_320_ANCHORS`).
  **4,337,013 parameters at 80 classes** (+0.9% over the paper's 4.3M; 4,500,543 at TF's 90 COCO ids). This is
  what ``ssd_lite_mobilenet_v2`` builds by default (:data:`DEFAULT_SSD_LITE_ARCH`).
* SuperGradients' ``ssd_lite_mobilenetv2_arch_params`` (:data:`SG_SSD_LITE_ARCH`; the layout its model zoo's
  21.5 mAP was measured with, and ``recipes/arch_params/ssd_lite_mobilenetv2_arch_params.yaml``, so the recipe
  ``coco2017_ssd_lite_mobilenet_v2`` trains it): the same taps; extra layers as inverted residuals of 512, 256,
  256, 64 channels (expansion 0.2/0.25/0.5/0.25, linear projection); separable predictors with a biased depthwise
  conv and ReLU, a plain 3x3 conv on the last (1x1) level; 6 default boxes per cell everywhere, 3234 at 320x320.
  **4,711,348 parameters at 80 classes** (our count of that arch_params, layer by layer; the 4.3M figure is the
  paper's layout's, not this one's). The registered parts' own defaults are this layout, so SuperGradients configs
  that name them build what they built there.

Outputs (``A`` default boxes, ``C`` classes; class 0 of the logits is the background):

* ``model.train()``: ``(locations [B, 4, A], confidences [B, C + 1, A], dboxes [A, 4])``: the raw offsets (SSD
  encoding, variances 0.1/0.2), the class logits, and the default boxes ``cx, cy, w, h`` in input pixels they are
  offsets from (SuperGradients returns the first two; the boxes travel along so that ``SSDLoss`` needs no copy of
  them and any input size works);
* ``model.eval()``: ``(decoded, raw)``: ``decoded`` ``[B, A, 5 + C]`` = ``cx, cy, w, h`` in input pixels, the
  best class probability, the ``C`` class probabilities (softmax, background dropped): SuperGradients' layout;
  ``raw`` the training tuple;
* traced or exported (``torch.jit.trace``, ONNX, ``torch.export``) in eval mode: ``decoded`` alone; the graph
  holds the default boxes of the input size it was traced at as constants (export at the deployment size).

``model.get_post_prediction_callback(conf=, iou=)`` gives the matching
:class:`~super_recipes.detection.ssd.postprocess.SSDPostPredictCallback`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual

from super_recipes.detection.customizable import CustomizableDetector
from super_recipes.detection.ssd.anchors import (
    SSD_LITE_320_ANCHORS,
    SSD_LITE_TF_320_ANCHORS,
    DefaultBoxes,
    build_default_boxes,
    decode_boxes,
)
from super_recipes.detection.ssd.postprocess import SSDPostPredictCallback
from super_recipes.detection.ssd.sg_names import ssd_lite_key
from super_recipes.detection.tracing import is_exporting
from super_recipes.errors import RecipeError
from super_recipes.registry import register_detection_module, register_model

__all__ = ["DEFAULT_SSD_LITE_ARCH", "SG_SSD_LITE_ARCH", "SSDHead", "SSDInvertedResidualNeck", "SSDLiteMobileNetV2",
           "SSDLiteMobileNetV2Backbone", "ssd_lite_mobilenet_v2"]

_CACHE_SIZE = 8  # input sizes whose default boxes are remembered

_TAPS = ["features.14.conv.0", "features.18"]  # block 14's expansion (stride 16), the 1280-channel layer (32)

# The MobileNetV2 paper's SSDLite (TF Object Detection API layout), as recipe specs: the factory's default.
DEFAULT_SSD_LITE_ARCH: dict[str, Any] = {
    "backbone": {"SSDLiteMobileNetV2Backbone": {"width_mult": 1.0, "out_layers": _TAPS}},
    # TF's extra layers: 1x1 to half of each width, depthwise 3x3 stride 2, 1x1, each with BN + ReLU6.
    "neck": {"SSDInvertedResidualNeck": {"blocks_out_channels": [512, 256, 256, 128],
                                         "expand_ratios": [0.2, 0.25, 0.5, 0.25], "projection_relu6": True}},
    "heads": {"SSDHead": {"lite": True, "lite_last_level": True, "depthwise_bias": False, "activation": "relu6",
                          "anchors": {"DefaultBoxes": SSD_LITE_TF_320_ANCHORS}}},
}

# SuperGradients' ssd_lite_mobilenetv2_arch_params (what recipes/arch_params/ssd_lite_mobilenetv2_arch_params.yaml
# spells out; the parts' own defaults).
SG_SSD_LITE_ARCH: dict[str, Any] = {
    "backbone": {"SSDLiteMobileNetV2Backbone": {"width_mult": 1.0, "out_layers": _TAPS}},
    "neck": {"SSDInvertedResidualNeck": {"blocks_out_channels": [512, 256, 256, 64],
                                         "expand_ratios": [0.2, 0.25, 0.5, 0.25]}},
    "heads": {"SSDHead": {"lite": True, "anchors": {"DefaultBoxes": SSD_LITE_320_ANCHORS}}},
}


def _check_grouped_conv_size(grouped_conv_size: int, where: str) -> None:
    if int(grouped_conv_size) != 1:
        raise RecipeError(f"{where}: only grouped_conv_size=1 (depthwise convolutions, as published) is supported, "
                          f"got {grouped_conv_size}.")


def _parse_out_layer(layer: Any, num_blocks: int) -> tuple[int, bool]:
    """``"features.K"`` / ``["features", K]`` -> (K, False): block K's output; ``"features.K.conv.0"`` (torchvision's
    name) / ``["features", K, "conv", 2]`` (SuperGradients' name, after the expansion's ReLU6) -> (K, True): the
    output of block K's 1x1 expansion."""
    parts = [str(p) for p in (layer.split(".") if isinstance(layer, str) else layer)]
    ok = len(parts) in (2, 4) and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < num_blocks
    if ok and len(parts) == 4:
        ok = parts[2] == "conv" and parts[3] in ("0", "2")
    if not ok:
        raise RecipeError(f"SSDLiteMobileNetV2Backbone: out_layers entry {layer!r} is not 'features.K' (block K's "
                          f"output, K < {num_blocks}) or 'features.K.conv.0' (block K's expansion layer).")
    return int(parts[1]), len(parts) == 4


@register_detection_module("MobileNetV2Backbone")
@register_detection_module("SSDLiteMobileNetV2Backbone")
class SSDLiteMobileNetV2Backbone(nn.Module):
    """MobileNetV2 feature layers (torchvision's, randomly initialised) returning the maps named in
    ``out_layers`` (``arch_params.backbone``; defaults: the SSD-Lite taps at stride 16 and 32).

    :param in_channels: input image channels.
    :param width_mult: MobileNetV2 width multiplier.
    :param out_layers: the maps to return, in network order (see :func:`_parse_out_layer` for the names).
    :param structure: accepted for SuperGradients configs; only ``None`` (the published block structure).
    :param grouped_conv_size: accepted for SuperGradients configs; only 1.
    """

    def __init__(self, in_channels: int = 3, width_mult: float = 1.0,
                 out_layers: Sequence[Any] = ("features.14.conv.0", "features.18"), structure: Any = None,
                 grouped_conv_size: int = 1):
        super().__init__()
        if structure is not None:
            raise RecipeError("SSDLiteMobileNetV2Backbone: a custom block structure is not supported; leave "
                              "structure empty (MobileNetV2's published blocks).")
        _check_grouped_conv_size(grouped_conv_size, "SSDLiteMobileNetV2Backbone")
        features = mobilenet_v2(weights=None, width_mult=float(width_mult)).features
        if in_channels != 3:
            stem = features[0][0]
            features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                       bias=False)
            nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")
        taps = [_parse_out_layer(layer, len(features)) for layer in out_layers]
        if not taps or taps != sorted(set(taps), key=lambda t: (t[0], not t[1])):
            raise RecipeError(f"SSDLiteMobileNetV2Backbone: out_layers must name distinct maps in network order, "
                              f"got {list(out_layers)}.")
        for index, expansion in taps:
            if expansion and not (isinstance(features[index], InvertedResidual) and len(features[index].conv) == 4):
                raise RecipeError(f"SSDLiteMobileNetV2Backbone: block {index} has no expansion layer to tap.")
        # Layers after the last tap would never run: leave them out (and out of the parameter count).
        self.features = features[: taps[-1][0] + 1]
        self.taps = taps
        self.out_channels = [self.features[i].conv[0].out_channels if expansion else self.features[i].out_channels
                             for i, expansion in taps]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, block in enumerate(self.features):
            if (index, True) in self.taps:
                # Run the block in two halves to expose its expansion output; the residual, if any, still applies.
                expanded = block.conv[0](x)
                outputs.append(expanded)
                y = expanded
                for layer in list(block.conv)[1:]:
                    y = layer(y)
                x = x + y if block.use_res_connect else y
            else:
                x = block(x)
            if (index, False) in self.taps:
                outputs.append(x)
        return outputs


@register_detection_module("SSDInvertedResidualNeck")
class SSDInvertedResidualNeck(nn.Module):
    """SSD extra layers (``arch_params.neck``): the backbone's maps unchanged, then one stride-2 MobileNetV2
    inverted-residual block (1x1 expansion, depthwise 3x3, 1x1 projection, each with BN) per entry of
    ``blocks_out_channels`` chained on the last map, each output returned. Defaults: SuperGradients' layout.

    :param in_channels: the backbone's ``out_channels``.
    :param blocks_out_channels: output channels of the extra blocks.
    :param expand_ratios: hidden width of each block as a fraction of its input channels.
    :param grouped_conv_size: accepted for SuperGradients configs; only 1.
    :param projection_relu6: a ReLU6 after each block's projection, as the TF Object Detection API's SSDLite extra
        layers (1x1 to half the width, depthwise 3x3, 1x1, all with BN + ReLU6: the same parameters as a block
        whose hidden width is half its output); ``False`` keeps MobileNetV2's linear projection (SuperGradients).
    """

    def __init__(self, in_channels: Sequence[int] | int, blocks_out_channels: Sequence[int] = (512, 256, 256, 64),
                 expand_ratios: Sequence[float] = (0.2, 0.25, 0.5, 0.25), grouped_conv_size: int = 1,
                 projection_relu6: bool = False):
        super().__init__()
        _check_grouped_conv_size(grouped_conv_size, "SSDInvertedResidualNeck")
        in_channels = [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if len(blocks_out_channels) != len(expand_ratios):
            raise RecipeError(f"SSDInvertedResidualNeck: {len(blocks_out_channels)} blocks_out_channels but "
                              f"{len(expand_ratios)} expand_ratios.")
        blocks, previous = [], in_channels[-1]
        for channels, ratio in zip(blocks_out_channels, expand_ratios, strict=True):
            block: nn.Module = InvertedResidual(previous, int(channels), 2, ratio, norm_layer=nn.BatchNorm2d)
            if projection_relu6:
                block = nn.Sequential(block, nn.ReLU6(inplace=True))
            blocks.append(block)
            previous = int(channels)
        self.neck_blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels + [int(c) for c in blocks_out_channels]

    def forward(self, inputs: Sequence[Tensor] | Tensor) -> list[Tensor]:
        outputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        x = outputs[-1]
        for block in self.neck_blocks:
            x = block(x)
            outputs.append(x)
        return outputs


_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def _separable_conv(in_channels: int, out_channels: int, depthwise_bias: bool, activation: str) -> nn.Sequential:
    """SSDLite predictor: depthwise 3x3 (+ BN + activation), then a 1x1 projection with bias."""
    return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=depthwise_bias),
                         nn.BatchNorm2d(in_channels), _ACTIVATIONS[activation](inplace=True),
                         nn.Conv2d(in_channels, out_channels, 1))


@register_detection_module("SSDHead")
class SSDHead(nn.Module):
    """SSD(-Lite) predictors over every feature map (``arch_params.heads``); returns the model output of each mode
    (see the module docstring). Defaults: SuperGradients' layout; the paper's (TF) layout sets
    ``lite_last_level=True, depthwise_bias=False, activation="relu6"``.

    :param in_channels: channels of each input map (the neck's ``out_channels``).
    :param num_classes: object classes; the head predicts ``num_classes + 1`` logits, index 0 the background.
    :param anchors: the default boxes: a :class:`DefaultBoxes`, its spec (``{DefaultBoxes: {...}}`` or a ``_target_``
        node); default SuperGradients' 320x320 set. Its per-level box counts size the predictors.
    :param lite: depthwise-separable predictors (SSDLite); else plain 3x3 convs.
    :param lite_last_level: with ``lite``, the last level's predictors separable too (TF); ``False`` keeps a plain
        3x3 conv there (SuperGradients, whose last map is 1x1).
    :param depthwise_bias: a bias in the predictors' depthwise conv (SuperGradients has one; TF and torchvision
        have none, as a BN follows).
    :param activation: after the predictors' depthwise conv + BN: ``"relu"`` (SuperGradients) or ``"relu6"`` (TF).
    """

    def __init__(self, in_channels: Sequence[int] | int, num_classes: int = 80, anchors: Any = None,
                 lite: bool = True, lite_last_level: bool = False, depthwise_bias: bool = True,
                 activation: str = "relu"):
        super().__init__()
        in_channels = [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if activation not in _ACTIVATIONS:
            raise RecipeError(f"SSDHead: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
        self.num_classes = int(num_classes)
        if anchors is None:
            anchors = {"DefaultBoxes": SSD_LITE_320_ANCHORS}
        self.default_boxes = build_default_boxes(anchors, "arch_params.heads.SSDHead.anchors")
        self.num_anchors = list(self.default_boxes.num_anchors)
        if len(self.num_anchors) != len(in_channels):
            raise RecipeError(f"SSDHead: the default boxes have {len(self.num_anchors)} levels but {len(in_channels)} "
                              "feature maps come in; give one feat_size / aspect-ratio list per map.")
        last = len(in_channels) - 1
        loc, conf = [], []
        for level, (channels, boxes) in enumerate(zip(in_channels, self.num_anchors, strict=True)):
            def make(out: int, level: int = level, channels: int = channels) -> nn.Module:
                if lite and (level < last or lite_last_level):
                    return _separable_conv(channels, out, depthwise_bias, activation)
                return nn.Conv2d(channels, out, 3, padding=1)

            loc.append(make(boxes * 4))
            conf.append(make(boxes * (self.num_classes + 1)))
        self.loc = nn.ModuleList(loc)
        self.conf = nn.ModuleList(conf)
        # Stride of the first map at the reference size: the input size is read off that map.
        self.first_stride = self.default_boxes.fig_size / self.default_boxes.feat_size[0]
        self._dboxes: dict[tuple, Tensor] = {}

    def forward(self, features: Sequence[Tensor] | Tensor) -> Any:
        features = [features] if isinstance(features, Tensor) else list(features)
        if len(features) != len(self.loc):
            raise RecipeError(f"SSDHead was built for {len(self.loc)} feature maps, got {len(features)}.")
        batch = features[0].shape[0]
        # Channel c of a box map is coordinate c // boxes of box shape c % boxes: [B, 4, boxes * h * w] with the
        # default boxes' shape-major order.
        locations = torch.cat([self.loc[i](f).reshape(batch, 4, -1) for i, f in enumerate(features)], dim=2)
        confidences = torch.cat([self.conf[i](f).reshape(batch, self.num_classes + 1, -1)
                                 for i, f in enumerate(features)], dim=2)
        # Python ints even under jit.trace: the default boxes of the traced input size become constants.
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        dboxes = self.dboxes_for(sizes, locations.device)
        if self.training:
            return locations, confidences, dboxes
        decoded = self.decode(locations, confidences, dboxes)
        if is_exporting():
            return decoded
        return decoded, (locations, confidences, dboxes)

    def dboxes_for(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        """Default boxes ``[A, 4]`` cx, cy, w, h in input pixels for maps of these sizes (cached per size)."""
        key = (tuple(feature_sizes), device)
        cached = self._dboxes.get(key)
        if cached is not None:
            return cached
        height, width = feature_sizes[0]
        image_size = (round(height * self.first_stride), round(width * self.first_stride))
        dboxes = self.default_boxes.for_feature_sizes(feature_sizes, image_size, device)
        if not is_exporting():  # tensors made while tracing belong to that trace
            if len(self._dboxes) >= _CACHE_SIZE:
                self._dboxes.pop(next(iter(self._dboxes)))
            self._dboxes[key] = dboxes
        return dboxes

    def decode(self, locations: Tensor, confidences: Tensor, dboxes: Tensor) -> Tensor:
        """Raw maps -> ``[B, A, 5 + C]``: boxes ``cx, cy, w, h`` in pixels, best class probability, class
        probabilities (background dropped); computed in at least float32."""
        dtype = torch.promote_types(locations.dtype, torch.float32)
        boxes = decode_boxes(locations.transpose(1, 2).to(dtype), dboxes.to(dtype), self.default_boxes.scale_xy,
                             self.default_boxes.scale_wh)
        probabilities = torch.softmax(confidences.transpose(1, 2).to(dtype), dim=-1)[..., 1:]
        best = probabilities.max(dim=-1, keepdim=True).values
        return torch.cat((boxes, best, probabilities), dim=-1)

    def get_post_prediction_callback(self, conf: float = 0.001, iou: float = 0.6, *, max_predictions: int = 300,
                                     **kwargs: Any) -> SSDPostPredictCallback:
        """The NMS post-processing for this head's eval output (the metrics' ``post_prediction_callback``)."""
        return SSDPostPredictCallback(conf=conf, iou=iou, max_predictions=max_predictions, **kwargs)


@register_model("SSDLiteMobileNetV2")
@register_model("ssd_lite_mobilenet_v2")
class SSDLiteMobileNetV2(CustomizableDetector):
    """SSD-Lite MobileNetV2 (``architecture: ssd_lite_mobilenet_v2``): a :class:`CustomizableDetector` whose parts
    default to the MobileNetV2 paper's SSDLite (:data:`DEFAULT_SSD_LITE_ARCH`, the TF Object Detection API layout:
    3 default boxes per cell on the stride-16 level, separable predictors everywhere, extra layers 512/256/256/128;
    4,337,013 parameters at 80 classes against the paper's 4.3M, Sandler et al. 2018, Table 6). ``arch_params``
    may replace any of ``backbone``, ``neck`` and ``heads`` with another spec; SuperGradients' layout
    (:data:`SG_SSD_LITE_ARCH`: 6 boxes everywhere, 4,711,348 parameters at 80 classes, counted from its
    ``ssd_lite_mobilenetv2_arch_params``; its model zoo reports 21.5 COCO mAP with it) is what
    ``recipes/arch_params/ssd_lite_mobilenetv2_arch_params.yaml`` spells out, so the recipe
    ``coco2017_ssd_lite_mobilenet_v2`` trains that one. Both at 320x320; see the module docstring for both layouts
    and the outputs.

    :param num_classes: object classes (the class predictors add a background logit).
    :param in_channels: input image channels.
    :param backbone: backbone spec; default MobileNetV2 tapped at stride 16 (expansion) and 32.
    :param neck: neck spec; default the paper's extra layers.
    :param heads: head spec; default the paper's predictors and default boxes.
    :param bn_eps: override the eps of every BatchNorm.
    :param bn_momentum: override the momentum of every BatchNorm.
    :param inplace_act: ``False`` makes in-place activations out-of-place.
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 3, backbone: Any = None, neck: Any = None,
                 heads: Any = None, bn_eps: float | None = None, bn_momentum: float | None = None,
                 inplace_act: bool = True):
        defaults = copy.deepcopy(DEFAULT_SSD_LITE_ARCH)
        super().__init__(backbone=backbone if backbone is not None else defaults["backbone"],
                         heads=heads if heads is not None else defaults["heads"],
                         neck=neck if neck is not None else defaults["neck"], num_classes=num_classes,
                         in_channels=in_channels, bn_eps=bn_eps, bn_momentum=bn_momentum, inplace_act=inplace_act)
        boxes = getattr(self.heads, "default_boxes", None)
        if isinstance(boxes, DefaultBoxes):
            # predict() letterboxes to the size the default boxes were designed for, unless a recipe says otherwise.
            self.processing_params["input_dim"] = (boxes.fig_size, boxes.fig_size)

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients SSD-Lite MobileNetV2 key (the checkpoint loader's hook; rules
        and SG sources in :mod:`super_recipes.detection.ssd.sg_names`); None where we have no place for SG's
        tensor. SG's checkpoints fit the SG layout (``**SG_SSD_LITE_ARCH``), not the default (paper) one."""
        # SG's flat InvertedResidual layers are renamed by block kind: read it off our own (torchvision) blocks.
        def expand_1(blocks: Any) -> frozenset[int]:
            return frozenset(i for i, block in enumerate(blocks or ())
                             if isinstance(block, InvertedResidual) and len(block.conv) == 3)

        return ssd_lite_key(sg_name, expand_1(getattr(self.backbone, "features", None)),
                            expand_1(getattr(self.neck, "neck_blocks", None)))


ssd_lite_mobilenet_v2 = SSDLiteMobileNetV2
