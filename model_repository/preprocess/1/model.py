"""Triton adapter: image bytes -> normalised model input (see matteserve.stages.preprocess)."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from matteserve import stages
from matteserve.contract import IMAGE, OPTIONS, PIXELS, PREPROCESS, PREPROCESS_MS, Parameter
from matteserve.triton_adapter import first_bytes, parameters, respond, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.spec, self.limits = spec_and_limits(params)
        self.uint8 = params.get(Parameter.PIXELS) == "uint8"

    def execute(self, requests):
        return respond(pb_utils, PREPROCESS, requests, self.preprocess)

    def preprocess(self, request):
        start = time.perf_counter()
        image, options = first_bytes(pb_utils, request, IMAGE), first_bytes(pb_utils, request, OPTIONS)
        pixels = stages.preprocess(image, options, self.spec, self.limits, uint8=self.uint8)
        took = np.array([[stages.elapsed_ms(start)]], dtype=np.float32)
        return [pb_utils.Tensor(PIXELS, pixels[None]), pb_utils.Tensor(PREPROCESS_MS, took)]
