"""The GPU target: a matting ONNX -> an FP16 TensorRT engine in the Triton model repository.

``graph`` rewrites the ONNX (static resizes, uint8 pixels in, final alpha out), ``fp16`` converts
its weights, ``parity`` compares graphs and engines on real photos, ``engine`` builds and runs the
TensorRT engine, ``stamp`` records what an engine is bound to, and ``build`` puts them together.
Everything except ``engine`` runs on a CPU machine with onnxruntime; TensorRT is imported lazily.
"""
