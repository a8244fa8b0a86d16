"""Triton adapter for the CPU target: the matting ONNX in the runtime the build chose, on the whole
batch at once (or, with the ``runtime`` parameter "stand-in", a fixed matte and no model:
matteserve.stand_in)."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from matteserve import stand_in
from matteserve.runtimes import Precision, Runtime, RuntimeSettings
from matteserve.segments import parse_ranges
from matteserve.stages import MattingRunner
from matteserve.triton_adapter import error_response, parameters, spec_and_limits


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(config)
        self.spec, _ = spec_and_limits(config)
        if params.get("runtime") == stand_in.RUNTIME:
            self.runner = stand_in.StandInRunner()
            return
        onnx_path = Path(args["model_repository"]) / args["model_version"] / params["onnx"]
        # Pre/post processes share these cores: the runtime's threads must not busy-wait.
        settings = RuntimeSettings(
            runtime=Runtime(params["runtime"]),
            precision=Precision(params["precision"]),
            threads=int(params["threads"]),
            spin=False,
            fp32_nodes=parse_ranges(params["fp32_nodes"]),
        )
        self.runner = MattingRunner(onnx_path, self.spec, settings=settings)

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy()[0] for r in requests]
        try:
            alphas = self.runner.run_grouped(inputs)
        except Exception as e:
            return [error_response(pb_utils, e, "matting") for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ALPHA", a[None])]) for a in alphas]
