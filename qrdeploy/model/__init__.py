"""The model protocol every attack is written against and its implementations: OrtModel
(onnxruntime) and TorchModel (torch)."""
