"""Keras ports of the QMRITools networks.

* :mod:`.config` - frozen architecture configs (:class:`UNetConfig`,
  :class:`ClassifierConfig`) with a JSON form carrying a ``"kind"`` field; no TensorFlow.
* :mod:`.unet` - the 2-D/3-D segmentation UNET with ResNet blocks, code generations A and B.
* :mod:`.classifier` - the 2-D per-slice side/position classifier ``Body_Pos_Side``.
* :mod:`.blocks` - shared Keras blocks; :mod:`.naming` - the layer-name scheme.

Importing the package imports neither TensorFlow nor Keras; ``build_unet`` and
``build_classifier`` are loaded on first use.
"""
from __future__ import annotations

from typing import Any

from legseg_tf.networks.config import (
    ClassifierConfig,
    UNetConfig,
    config_from_dict,
    config_from_json,
    total_stride,
)

__all__ = [
    "ClassifierConfig",
    "UNetConfig",
    "build_classifier",
    "build_unet",
    "config_from_dict",
    "config_from_json",
    "total_stride",
]


def __getattr__(name: str) -> Any:
    if name == "build_unet":
        from legseg_tf.networks.unet import build_unet

        return build_unet
    if name == "build_classifier":
        from legseg_tf.networks.classifier import build_classifier

        return build_classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
