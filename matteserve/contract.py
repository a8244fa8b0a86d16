"""Names shared by the model repository, the gateway and the clients: the ensemble's interface."""

ENSEMBLE = "remove_background"

# The largest gRPC message between a caller and the gateway, either way: the gateway's receive and
# send limits and the clients' send and receive limits all default to this one value, so an answer
# the gateway may send is one the caller may receive.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Metadata a client sends with its own receive limit, when lower: the gateway refuses a larger
# result before sending it, with a message saying what fits.
MAX_RESPONSE_BYTES_KEY = "matteserve-max-response-bytes"

# Ensemble inputs: the image bytes and the per-request options (JSON, see matteserve.options).
IMAGE = "IMAGE"
OPTIONS = "OPTIONS"
# Ensemble outputs: the encoded result and a JSON object with content_type, width, height and the
# preprocess/postprocess milliseconds.
RESULT = "RESULT"
META = "META"

# Between the steps.
PIXELS = "PIXELS"  # preprocess -> matting: the normalised model input
ALPHA = "ALPHA"  # matting -> postprocess: the model-sized matte, UINT8
PREPROCESS_MS = "PREPROCESS_MS"  # preprocess -> postprocess, for the per-stage timings in META

PREPROCESS = "preprocess"
MATTING = "matting"
POSTPROCESS = "postprocess"
