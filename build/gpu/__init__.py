"""The GPU target: a matting ONNX -> an FP16 TensorRT engine in the Triton model repository.

``graph`` rewrites the ONNX (static resizes, uint8 pixels in, final alpha out), ``fp16`` converts
its weights, ``parity`` compares graphs and engines on the calibration and gate photo sets
(:mod:`matteserve.build.photos`), ``engine`` builds and runs the TensorRT engine, ``stamp`` records
what an engine is bound to and what this node has, ``store`` keeps engines for every GPU and TensorRT in a shared
folder, and ``build`` puts them together.
Everything except ``engine`` runs on a CPU machine with onnxruntime; TensorRT is imported lazily.
"""
