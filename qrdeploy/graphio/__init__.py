"""ONNX files in and out: validated loads of untrusted files, saves, weight layers, isolation in
a child process and the input contract."""
