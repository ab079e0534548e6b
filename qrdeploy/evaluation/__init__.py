"""Evaluation of a model: clean accuracy, the one attack runner with its suites, metrics,
masking checks, verdict and results.

The names of qrdeploy 0.1's module of the same name are forwarded, deprecated
(qrdeploy.core.compat)."""

from qrdeploy.core.compat import forward

__getattr__ = forward(__name__)
