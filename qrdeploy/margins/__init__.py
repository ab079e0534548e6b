"""Margins along directions and the F.L. paper's per-class criteria.

The names of qrdeploy 0.1's module of the same name are forwarded, deprecated
(qrdeploy.core.compat)."""

from qrdeploy.core.compat import forward

__getattr__ = forward(__name__)
