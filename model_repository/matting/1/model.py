"""Triton adapter for the CPU target: the matting ONNX in the runtime the build chose, on the whole
batch at once (or, with the ``runtime`` parameter "stand-in", a fixed matte and no model:
matteserve.stand_in)."""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from matteserve import stand_in
from matteserve.contract import ALPHA, MATTING, PIXELS, Parameter
from matteserve.runtimes import Precision, Runtime, RuntimeSettings
from matteserve.segments import parse_ranges
from matteserve.stages import MattingRunner
from matteserve.triton_adapter import parameters, respond, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        if params.get(Parameter.RUNTIME) == stand_in.RUNTIME:
            self.runner = stand_in.StandInRunner()
            return
        onnx_path = Path(args["model_repository"]) / args["model_version"] / params[Parameter.ONNX]
        # Pre/post processes share these cores: the runtime's threads must not busy-wait.
        settings = RuntimeSettings(
            runtime=Runtime(params[Parameter.RUNTIME]),
            precision=Precision(params[Parameter.PRECISION]),
            threads=int(params[Parameter.THREADS]),
            spin=False,
            fp32_nodes=parse_ranges(params[Parameter.FP32_NODES]),
        )
        self.runner = MattingRunner(onnx_path, spec_and_limits(params)[0], settings=settings)

    def execute(self, requests):
        return respond(pb_utils, MATTING, requests, self.pixels, self.matting)

    def pixels(self, request):
        return pb_utils.get_input_tensor_by_name(request, PIXELS).as_numpy()[0]

    def matting(self, batch):
        return [[pb_utils.Tensor(ALPHA, alpha[None])] for alpha in self.runner.run_grouped(batch)]
