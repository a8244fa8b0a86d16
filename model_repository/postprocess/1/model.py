"""Triton adapter: alpha + original bytes -> encoded result and its Meta (see matteserve.stages.postprocess)."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from matteserve import stages
from matteserve.contract import ALPHA, IMAGE, META, OPTIONS, POSTPROCESS, PREPROCESS_MS, RESULT, Meta
from matteserve.triton_adapter import first_bytes, parameters, respond, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        _, self.limits = spec_and_limits(parameters(args))

    def execute(self, requests):
        return respond(pb_utils, POSTPROCESS, requests, self.postprocess)

    def postprocess(self, request):
        start = time.perf_counter()
        image, options = first_bytes(pb_utils, request, IMAGE), first_bytes(pb_utils, request, OPTIONS)
        alpha = pb_utils.get_input_tensor_by_name(request, ALPHA).as_numpy()[0]
        result = stages.postprocess(image, options, alpha, self.limits)
        preprocess_ms = float(pb_utils.get_input_tensor_by_name(request, PREPROCESS_MS).as_numpy().reshape(-1)[0])
        postprocess_ms = stages.elapsed_ms(start)
        meta = Meta(result.content_type, result.width, result.height, round(preprocess_ms, 3), round(postprocess_ms, 3))
        outputs = {RESULT: result.data, META: meta.to_json()}
        return [pb_utils.Tensor(name, np.array([[value]], dtype=np.object_)) for name, value in outputs.items()]
