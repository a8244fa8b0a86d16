"""Triton adapter: alpha + original bytes -> encoded result (see matteserve.stages.postprocess)."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from matteserve import stages
from matteserve.triton_adapter import error_response, first_bytes, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        _, self.limits = spec_and_limits(json.loads(args["model_config"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            start = time.perf_counter()
            try:
                result = stages.postprocess(
                    first_bytes(pb_utils, request, "IMAGE"),
                    first_bytes(pb_utils, request, "OPTIONS"),
                    pb_utils.get_input_tensor_by_name(request, "ALPHA").as_numpy()[0],
                    self.limits,
                )
            except Exception as e:
                responses.append(error_response(pb_utils, e, "postprocess"))
                continue
            preprocess_ms = float(pb_utils.get_input_tensor_by_name(request, "PREPROCESS_MS").as_numpy().reshape(-1)[0])
            meta = {
                "content_type": result.content_type,
                "width": result.width,
                "height": result.height,
                "preprocess_ms": round(preprocess_ms, 3),
                "postprocess_ms": round(stages.elapsed_ms(start), 3),
            }
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("RESULT", np.array([[result.data]], dtype=np.object_)),
                        pb_utils.Tensor("META", np.array([[json.dumps(meta).encode()]], dtype=np.object_)),
                    ]
                )
            )
        return responses
