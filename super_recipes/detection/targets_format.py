"""``DetectionTargetsFormat``: the SuperGradients names of the detection target formats.

Serves the recipe keys that take a target format (``DetectionTargetsFormatTransform``'s ``input_format`` and
``output_format``, a detection dataset's ``output_format``, the visualisation callbacks' ``target_format``) when
they are set from Python. Each member's value is the format string itself (``DetectionTargetsFormat.LABEL_CXCYWH
== "LABEL_CXCYWH"``), so a member and its string are interchangeable everywhere a format is accepted; the
formats are those of :mod:`super_recipes.detection.box_formats` (continuous pixel coordinates: a box over pixel
columns ``a..b`` inclusive has ``x1 = a``, ``x2 = b + 1``; ``NORMALIZED_`` ones divided by the image size).
"""

from __future__ import annotations

from enum import Enum

from super_recipes.detection.box_formats import split_target_format


class DetectionTargetsFormat(str, Enum):
    """Layout of an ``[N, 5]`` target array: where the label is and how the box is written.

    The eight SuperGradients names, plus ``LABEL_XYWH`` / ``XYWH_LABEL`` (top-left corner and size, the COCO
    box). Recipe key: any ``input_format`` / ``output_format`` / ``target_format`` value.
    """

    LABEL_XYXY = "LABEL_XYXY"
    XYXY_LABEL = "XYXY_LABEL"
    LABEL_NORMALIZED_XYXY = "LABEL_NORMALIZED_XYXY"
    NORMALIZED_XYXY_LABEL = "NORMALIZED_XYXY_LABEL"
    LABEL_CXCYWH = "LABEL_CXCYWH"
    CXCYWH_LABEL = "CXCYWH_LABEL"
    LABEL_NORMALIZED_CXCYWH = "LABEL_NORMALIZED_CXCYWH"
    NORMALIZED_CXCYWH_LABEL = "NORMALIZED_CXCYWH_LABEL"
    LABEL_XYWH = "LABEL_XYWH"
    XYWH_LABEL = "XYWH_LABEL"

    # str() and f-strings give the bare format name (as in a recipe), not "DetectionTargetsFormat.X": the
    # format helpers read formats through str(), and Python 3.11+ changed what a str-mixin Enum formats to.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def label_first(self) -> bool:
        """Whether the label is column 0 (else column 4)."""
        return split_target_format(self.value)[0]

    @property
    def box_format(self) -> str:
        """The box part: ``XYXY``, ``XYWH``, ``CXCYWH``, ``NORMALIZED_XYXY`` or ``NORMALIZED_CXCYWH``."""
        return split_target_format(self.value)[1]


__all__ = ["DetectionTargetsFormat"]
