"""Serving a model: one onnxruntime session and the predictor (pre-process, predict, post-process)."""
