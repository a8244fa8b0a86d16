"""Stubs generated from matteserve/api/proto/matteserve/v1/matteserve.proto when the package is built (setup.py)."""
