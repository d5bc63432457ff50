"""Backbones: the hub loader, one adapter per model family, preprocessing, ONNX export."""
