"""Stubs generated from gateway/proto/matteserve/v1/matteserve.proto by gateway/protogen.py."""
