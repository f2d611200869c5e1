"""Import Wolfram ``.wlnet`` networks (e.g. the QMRITools release nets) into Keras 3.

Pure Python: no Wolfram software is needed. The pieces, each with one job:

* :mod:`legseg_tf.wlnet.expr` decodes Wolfram ``Compress`` strings (``!boR`` expressions);
* :mod:`legseg_tf.wlnet.reader` turns the HDF5 container into a typed net description;
* :mod:`legseg_tf.wlnet.translator` builds an equivalent Keras functional model and the
  JSON-serialisable ``"wlnet_graph"`` config it can be rebuilt from;
* :mod:`legseg_tf.wlnet.cli` is the ``legseg-import`` command.

Importing this package (and ``expr``/``reader``) never imports TensorFlow or Keras.
"""
from legseg_tf.wlnet.expr import ExpressionError, WlnetError
from legseg_tf.wlnet.reader import (
    UnknownLayerError, WlnetFile, WlnetFormatError, read_wlnet,
)

__all__ = [
    "ExpressionError", "UnknownLayerError", "WlnetError", "WlnetFile", "WlnetFormatError",
    "read_wlnet",
]
