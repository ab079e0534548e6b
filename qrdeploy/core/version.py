"""qrdeploy's version, in one place (pyproject.toml repeats it; a test checks they agree)."""

__version__ = "0.2.0"
