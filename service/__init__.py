"""stockcast: stock-price forecasts served from an ONNX model over a cached bar store."""

__version__ = "0.1.0"
