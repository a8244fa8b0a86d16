"""Names shared by the model repository, the gateway and the clients: the ensemble's interface."""

ENSEMBLE = "remove_background"

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
