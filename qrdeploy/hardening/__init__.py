"""Hardening passes on ONNX initializers: the quantization maths, the weight encodings, the
passes and their recipes."""
