"""Data sets: the embedded ones, torchvision folders and npz files, as float32 NCHW in [0, 1].

The names of qrdeploy 0.1's module of the same name are forwarded, deprecated
(qrdeploy.core.compat)."""

from qrdeploy.core.compat import forward

__getattr__ = forward(__name__)
