"""lstm-train: train recurrent models in PyTorch and export servable ONNX packages."""
