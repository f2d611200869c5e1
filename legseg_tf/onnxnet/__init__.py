"""Import ONNX networks (e.g. QMRITools nets exported with Wolfram ``Export[..., "ONNX"]``).

The translator emits the same ``"wlnet_graph"`` config as :mod:`legseg_tf.wlnet`, so an
imported ONNX net is stored and rebuilt by the app exactly like a ``.wlnet`` net:

* :mod:`legseg_tf.onnxnet.graph` loads and checks the file with the ``onnx`` package
  (optional extra ``legseg[onnx]``) and folds constant expressions;
* :mod:`legseg_tf.onnxnet.translator` turns the graph into the config and Keras weights;
* :mod:`legseg_tf.onnxnet.importer` is the ``.onnx`` branch of ``legseg-import``.

Importing this package imports neither TensorFlow, Keras nor onnx.
"""
from legseg_tf.onnxnet.graph import OnnxImportError

__all__ = ["OnnxImportError"]
