"""Input gradients of an ONNX classifier as a second ONNX graph that plain onnxruntime runs.

The names of qrdeploy 0.1's module of the same name are forwarded, deprecated
(qrdeploy.core.compat)."""

from qrdeploy.core.compat import forward

__getattr__ = forward(__name__)
