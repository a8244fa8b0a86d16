"""Triton adapter: image bytes -> normalised model input (see matteserve.stages.preprocess)."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from matteserve import stages
from matteserve.triton_adapter import error_response, first_bytes, parameters, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.spec, self.limits = spec_and_limits(config)
        self.uint8 = parameters(config).get("pixels") == "uint8"

    def execute(self, requests):
        responses = []
        for request in requests:
            start = time.perf_counter()
            try:
                pixels = stages.preprocess(
                    first_bytes(pb_utils, request, "IMAGE"),
                    first_bytes(pb_utils, request, "OPTIONS"),
                    self.spec,
                    self.limits,
                    uint8=self.uint8,
                )
            except Exception as e:
                responses.append(error_response(pb_utils, e, "preprocess"))
                continue
            took = np.array([[stages.elapsed_ms(start)]], dtype=np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("PIXELS", pixels[None]), pb_utils.Tensor("PREPROCESS_MS", took)]
                )
            )
        return responses
