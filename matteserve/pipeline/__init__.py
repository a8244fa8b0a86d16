"""Pure image functions: decode, resize, normalise, finalise the alpha, compose and encode.

Nothing here knows about Triton or gRPC; the python-backend models and the in-process reference
are thin adapters over these functions.
"""
