"""The matteserve.v1 gRPC API that the client and the gateway share.

The proto is ``matteserve/api/proto/matteserve/v1/matteserve.proto``; its stubs are
``matteserve.api.v1.matteserve_pb2`` and ``matteserve_pb2_grpc``, generated when the package is built.
This module adds what both sides must agree on beyond the proto.
"""

from __future__ import annotations

from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.options import OutputFormat

# Metadata key of the request id: sent by a caller that names its request, and in every answer's trailers.
REQUEST_ID_KEY = "x-request-id"

# The largest gRPC message between a caller and the gateway, either way: the gateway's receive and
# send limits and the clients' send and receive limits all default to this one value, so an answer
# the gateway may send is one the caller may receive.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Metadata a client sends with its own receive limit, when lower: the gateway refuses a larger
# result before sending it, with a message saying what fits.
MAX_RESPONSE_BYTES_KEY = "matteserve-max-response-bytes"

# OUTPUT_FORMAT_<NAME> in the proto is OutputFormat.<NAME>; a test checks that both list the same formats.
FORMAT_TO_PROTO: dict[OutputFormat, pb.OutputFormat] = {f: getattr(pb, f"OUTPUT_FORMAT_{f.name}") for f in OutputFormat}
# An unset format (an older or minimal caller) means PNG.
FORMAT_FROM_PROTO: dict[pb.OutputFormat, OutputFormat] = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.PNG,
    **{v: f for f, v in FORMAT_TO_PROTO.items()},
}
