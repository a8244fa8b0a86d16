"""The GPU repository's configs, rendered and parsed back with model_config_pb2, and the engine's
profile taken from the same max batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from matteserve import contract, stages
from matteserve.build import repository
from matteserve.build.configs import ServingPlan, Target
from matteserve.build.gpu import engine
from matteserve.build.gpu.build import engine_options
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ZOO

from ..conftest import assert_steps_agree_on_tensors, parsed_configs  # type: ignore[import-not-found]

ENGINES = (("8.6", "model.sm86.plan"), ("9.0", "model.sm90.plan"))
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU


@pytest.fixture
def plan() -> ServingPlan:
    return ServingPlan.for_host(ZOO["u2netp"], Target.GPU, cores=16, max_batch_size=32, engine_files=ENGINES)


def test_the_matting_model_is_a_tensorrt_plan_on_the_gpu_per_compute_capability(plan: ServingPlan) -> None:
    matting = parsed_configs(plan)[contract.MATTING]
    assert matting.platform == "tensorrt_plan"
    assert not matting.backend
    assert [g.kind for g in matting.instance_group] == [KIND_GPU]
    assert dict(matting.cc_model_filenames) == dict(ENGINES)
    assert (matting.input[0].data_type, list(matting.input[0].dims)) == (model_config_pb2.TYPE_UINT8, [320, 320, 3])
    assert (matting.output[0].data_type, list(matting.output[0].dims)) == (model_config_pb2.TYPE_FP32, [320, 320])


def test_the_engine_profile_and_the_engine_config_come_from_one_plan(plan: ServingPlan) -> None:
    """One source of truth: the profile's (min, opt, max) and config.pbtxt's max batch, preferred
    batch sizes and CUDA graphs all come from the plan's max batch size."""
    options = engine_options(plan, engine.Typing.STRONG, ())
    low, opt, high = options.profile
    matting = parsed_configs(plan)[contract.MATTING]
    assert (low[0], opt[0], high[0]) == plan.engine_profile_batches == (1, 8, 32)
    assert matting.max_batch_size == high[0]
    assert list(high[1:]) == list(matting.input[0].dims)
    graphs = [s.batch_size for s in matting.optimization.cuda.graph_spec]
    assert list(matting.dynamic_batching.preferred_batch_size) == graphs
    assert opt[0] in graphs, "the profile's opt batch is one the batcher prefers and a graph covers"
    assert {w.batch_size for w in matting.model_warmup} == {low[0], opt[0], high[0]}


def test_the_engine_batches_briefly_with_two_instances_per_gpu(plan: ServingPlan) -> None:
    matting = parsed_configs(plan)[contract.MATTING]
    assert 100 <= matting.dynamic_batching.max_queue_delay_microseconds <= 500
    assert [(g.kind, g.count) for g in matting.instance_group] == [(KIND_GPU, 2)]


def test_odd_batch_sizes_fall_into_a_graph_through_its_lower_bound(plan: ServingPlan) -> None:
    specs = parsed_configs(plan)[contract.MATTING].optimization.cuda.graph_spec
    covered = {b for s in specs for b in range(s.graph_lower_bound.batch_size, s.batch_size + 1)}
    assert covered == set(range(1, plan.max_batch_size + 1))
    assert all(list(s.graph_lower_bound.input[contract.PIXELS].dim) == [320, 320, 3] for s in specs)


def test_python_steps_and_the_ensemble_take_small_batches_on_the_gpu(plan: ServingPlan) -> None:
    cfgs = parsed_configs(plan)
    for name in (contract.PREPROCESS, contract.POSTPROCESS, contract.ENSEMBLE):
        assert 1 <= cfgs[name].max_batch_size <= 2, name


def test_steps_agree_on_uint8_pixels_and_fp32_alpha(plan: ServingPlan) -> None:
    cfgs = parsed_configs(plan)
    assert_steps_agree_on_tensors(cfgs)
    assert cfgs[contract.PREPROCESS].parameters["pixels"].string_value == "uint8"
    for step in cfgs[contract.ENSEMBLE].ensemble_scheduling.step:
        assert set(step.input_map) == {t.name for t in cfgs[step.model_name].input}


def test_cuda_graphs_and_warmup_cover_the_common_batch_sizes(plan: ServingPlan) -> None:
    matting = parsed_configs(plan)[contract.MATTING]
    assert matting.optimization.cuda.graphs
    specs = matting.optimization.cuda.graph_spec
    assert [s.batch_size for s in specs] == [1, 2, 4, 8, 16, 32]
    assert all(list(s.input[contract.PIXELS].dim) == [320, 320, 3] for s in specs)
    warmups = {w.batch_size: w for w in matting.model_warmup}
    assert set(warmups) == {1, 8, 32}
    for w in warmups.values():
        pixels = w.inputs[contract.PIXELS]
        assert (pixels.data_type, list(pixels.dims), pixels.random_data) == (
            model_config_pb2.TYPE_UINT8,
            [320, 320, 3],
            True,
        )


def test_pre_and_post_stay_python_on_cpu_with_instances_from_the_cores(plan: ServingPlan) -> None:
    cfgs = parsed_configs(plan)
    for name, count in ((contract.PREPROCESS, 16 // 3), (contract.POSTPROCESS, 16 // 2)):
        assert cfgs[name].backend == "python"
        assert [(g.kind, g.count) for g in cfgs[name].instance_group] == [(KIND_CPU, count)]


def test_every_batched_step_has_two_priority_levels_interactive_by_default(plan: ServingPlan) -> None:
    for name in (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS):
        batching = parsed_configs(plan)[name].dynamic_batching
        assert (batching.priority_levels, batching.default_priority_level) == (2, 1)


def test_the_cpu_target_is_unchanged_by_the_gpu_options() -> None:
    cpu = ServingPlan.for_host(ZOO["u2netp"], Target.CPU, cores=2, max_batch_size=4, limits=ImageLimits())
    cfgs = parsed_configs(cpu)
    assert cfgs[contract.PREPROCESS].output[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfgs[contract.PREPROCESS].output[0].dims) == [3, 320, 320]
    assert cfgs[contract.MATTING].backend == "python"


def test_a_gpu_plan_without_engines_is_refused() -> None:
    with pytest.raises(ModelError, match="engine files"):
        repository.render(ServingPlan.for_host(ZOO["u2netp"], Target.GPU, cores=4))


def test_opt_batch_beyond_the_max_is_refused(plan: ServingPlan) -> None:
    with pytest.raises(ModelError, match="opt batch"):
        engine_options(plan, engine.Typing.STRONG, (), opt_batch_size=64)


def test_trtexec_recipe_has_the_same_profile_and_precision(plan: ServingPlan) -> None:
    strong = engine.trtexec_command(
        Path("m.onnx"), Path("m.plan"), engine_options(plan, engine.Typing.STRONG, ()), Path("t.cache")
    )
    assert "--minShapes=PIXELS:1x320x320x3" in strong
    assert "--maxShapes=PIXELS:32x320x320x3" in strong
    assert "--stronglyTyped" in strong
    assert "--fp16" not in strong
    flag = engine.trtexec_command(
        Path("m.onnx"), Path("m.plan"), engine_options(plan, engine.Typing.FP16_FLAG, ("Conv_787",)), Path("t.cache")
    )
    assert "--fp16" in flag
    assert "--layerPrecisions=Conv_787:fp32" in flag


@pytest.mark.parametrize(
    ("version", "typing"),
    [("10.3.0", engine.Typing.STRONG), ("11.0.0.1", engine.Typing.STRONG), ("8.6.1", engine.Typing.FP16_FLAG)],
)
def test_the_tensorrt_version_decides_how_fp16_is_built(version: str, typing: engine.Typing) -> None:
    assert engine.typing_for(version) is typing


def test_preprocess_sends_resized_uint8_pixels_for_the_gpu(photos: dict[str, bytes]) -> None:
    spec, limits = ZOO["u2netp"], ImageLimits()
    pixels = stages.preprocess(photos["chelsea"], b"{}", spec, limits, uint8=True)
    assert (pixels.dtype, pixels.shape) == (np.uint8, (320, 320, 3))
    assert pixels.nbytes * 4 == stages.preprocess(photos["chelsea"], b"{}", spec, limits).nbytes
    np.testing.assert_array_equal(
        tensor.normalise(pixels, spec), stages.preprocess(photos["chelsea"], b"{}", spec, limits)
    )


def test_an_fp32_alpha_rounds_as_the_cpu_path_does() -> None:
    alpha = np.array([[0.0, 0.5 / 255, 1.49 / 255, 1.0, 1.2, -0.1]], np.float32)
    np.testing.assert_array_equal(tensor.alpha_to_uint8(alpha), [[0, 0, 1, 255, 255, 0]])
