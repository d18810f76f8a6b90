"""fringelive.export: the model bundle (ONNX + card.json), checkpoint import and ONNX/TensorRT export."""
