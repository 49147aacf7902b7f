"""Policy interface, models, training, ONNX export, inference backends."""
