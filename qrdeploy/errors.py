"""The exception hierarchy. Every error a user can cause is a QrdeployError whose message is one
line saying what was wrong and how to fix it; the CLI prints it and exits with code 1."""

from __future__ import annotations


class QrdeployError(Exception):
    """Base class of every error qrdeploy raises on purpose."""


class DataError(QrdeployError):
    """A data set is missing, malformed or does not fit the model."""


class GraphError(QrdeployError):
    """An ONNX file cannot be loaded, validated, or is outside what qrdeploy supports."""


class PassError(QrdeployError):
    """A graph pass is misconfigured or would silently do nothing."""


class UnsupportedOpError(GraphError):
    """An ONNX op (or attribute value) has no gradient rule."""


class CheckpointError(QrdeployError):
    """A training checkpoint is missing, corrupt or of an unknown kind."""


class RuntimeMissingError(QrdeployError):
    """No onnxruntime build is installed, or torch is needed but absent."""


class ConfigError(QrdeployError):
    """A setting (CLI option, recipe, policy) is out of range."""


class UsageError(ConfigError):
    """Options that cannot go together, or one missing that another needs; the CLI exits 2
    (usage), as argparse does for its own usage errors."""


class OutputError(QrdeployError):
    """An output path cannot be written (a folder, a read-only or missing place, a full disk)."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type's name when empty), at most `limit`
    characters (None: the whole line): onnx's and onnxruntime's messages run over many lines.
    A first line that announces what follows ("...: ", onnxruntime's "for the following
    indices") is joined with the lines after it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__[:limit]
    head = lines[0]
    if len(lines) > 1 and head.endswith((":", "for the following indices")):
        head = " ".join([head, *lines[1:]])  # a line that announces its details keeps them
    return head[:limit]


class InputContractError(QrdeployError):
    """The declared input contract does not fit the model (the input guard); the message names
    the --input-spec that does."""
