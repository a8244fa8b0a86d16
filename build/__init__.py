"""Model build: fetch a matting ONNX, prepare it, and write a Triton model repository."""
