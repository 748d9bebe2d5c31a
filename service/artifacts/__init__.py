"""A model artifact on disk: its manifest, content hash, ONNX I/O names and the `current` pointer."""
