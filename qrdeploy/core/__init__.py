"""Shared building blocks with no feature of their own: atomic file writes, statistics, progress,
the onnxruntime session, plotting, the JSON-schema validator, attack losses, counter-based
randomness, the version and the compatibility shims."""
