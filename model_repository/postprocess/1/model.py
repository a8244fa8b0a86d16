"""Triton adapter: alpha + original bytes -> encoded result and its Meta (see matteserve.stages.postprocess)."""

import time

import triton_python_backend_utils as pb_utils

from matteserve import stages
from matteserve.contract import ALPHA, IMAGE, META, OPTIONS, POSTPROCESS, PREPROCESS_MS, RESULT, Meta
from matteserve.triton_adapter import bytes_tensor, first_bytes, limits_of, parameters, respond


class TritonPythonModel:
    def initialize(self, args):
        self.limits = limits_of(parameters(args))

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
        return [bytes_tensor(pb_utils, RESULT, result.data), bytes_tensor(pb_utils, META, meta.to_json())]
