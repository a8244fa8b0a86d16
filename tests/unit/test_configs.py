"""Rendered Triton configs, parsed back with model_config_pb2 and checked for consistency."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from matteserve import contract, triton_adapter
from matteserve.build import configs, repository
from matteserve.build.configs import ServingPlan, Target
from matteserve.errors import ModelError
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ZOO

from ..conftest import assert_steps_agree_on_tensors, parsed_configs  # type: ignore[import-not-found]


@pytest.fixture
def plan() -> ServingPlan:
    return ServingPlan.for_host(
        ZOO["u2netp"], Target.CPU, cores=2, max_batch_size=4, limits=ImageLimits(max_pixels=123)
    )


def test_every_config_round_trips_through_text_format(plan: ServingPlan) -> None:
    for name, cfg in parsed_configs(plan).items():
        assert cfg.name == name
        assert configs.from_pbtxt(configs.to_pbtxt(cfg)) == cfg


def test_one_max_batch_size_everywhere(plan: ServingPlan) -> None:
    assert {cfg.max_batch_size for cfg in parsed_configs(plan).values()} == {4}


def test_ensemble_wires_each_tensor_from_an_earlier_step(plan: ServingPlan) -> None:
    cfgs = parsed_configs(plan)
    ensemble = cfgs[contract.ENSEMBLE]
    assert ensemble.platform == "ensemble"
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = cfgs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody produced"
        assert set(step.output_map) == {t.name for t in model.output}
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available


def test_tensor_shapes_and_types_agree_between_steps(plan: ServingPlan) -> None:
    cfgs = parsed_configs(plan)
    assert_steps_agree_on_tensors(cfgs)
    assert list(cfgs[contract.MATTING].input[0].dims) == [3, 320, 320]
    assert cfgs[contract.MATTING].output[0].data_type == model_config_pb2.TYPE_UINT8


def test_only_the_original_bytes_cross_to_postprocess_not_pixels(plan: ServingPlan) -> None:
    post = parsed_configs(plan)[contract.POSTPROCESS]
    assert {t.name for t in post.input} == {contract.IMAGE, contract.OPTIONS, contract.ALPHA, contract.PREPROCESS_MS}


def test_cpu_models_are_python_on_cpu_with_dynamic_batching(plan: ServingPlan) -> None:
    for name in (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS):
        cfg = parsed_configs(plan)[name]
        assert cfg.backend == "python"
        assert cfg.HasField("dynamic_batching")
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size == plan.max_queue_size
        assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_the_adapters_read_back_the_spec_and_limits_the_configs_carry(plan: ServingPlan) -> None:
    for name in (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS):
        # What Triton hands a python model's initialize: the config as JSON, proto field names, defaults too.
        text = json_format.MessageToJson(
            parsed_configs(plan)[name], preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        args = {"model_config": text}
        params = triton_adapter.parameters(args)
        assert triton_adapter.spec_and_limits(params) == (plan.spec, plan.limits), name
    assert plan.limits.max_pixels == 123
    assert parsed_configs(plan)[contract.MATTING].parameters[contract.Parameter.THREADS].string_value == "2"


def test_size_rule_models_get_variable_dims() -> None:
    plan = ServingPlan.for_host(ZOO["modnet"], Target.CPU, cores=2)
    assert list(parsed_configs(plan)[contract.MATTING].input[0].dims) == [3, -1, -1]
    assert list(parsed_configs(plan)[contract.MATTING].output[0].dims) == [-1, -1]


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ModelError, match="max batch size"):
        ServingPlan(ZOO["u2netp"], max_batch_size=0)


def test_unknown_fields_are_rejected_by_the_proto_schema() -> None:
    with pytest.raises(Exception, match="no_such_field"):
        configs.parse({"name": "x", "no_such_field": 1})


def test_written_repository_has_every_model_and_its_files(plan: ServingPlan, tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    out = repository.write(plan, onnx, tmp_path / "repo", {"model": "u2netp"})
    for name in (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS):
        assert (out / name / "1" / "model.py").is_file()
        assert configs.from_pbtxt((out / name / "config.pbtxt").read_text()).name == name
    assert (out / contract.ENSEMBLE / "1").is_dir()
    assert (out / contract.MATTING / "1" / "model.onnx").read_bytes() == b"onnx"
    assert repository.read_manifest(out)["model"] == "u2netp"  # type: ignore[index]
    assert not list(tmp_path.glob(".repo.*")), "the staging folder must be gone"


def test_every_queue_drops_a_request_whose_own_timeout_expired_and_small_images_go_first() -> None:
    # Triton applies a request's timeout only where it shortens a non-zero default: a default of 0
    # would let every deadline the gateway sends be ignored.
    plan = ServingPlan.for_host(ZOO["u2netp"], Target.CPU, cores=2, max_batch_size=4)
    for render in (configs.preprocess_config, configs.matting_config, configs.postprocess_config):
        batching = render(plan).dynamic_batching
        policy = batching.default_queue_policy
        assert policy.allow_timeout_override
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
        assert policy.default_timeout_microseconds >= 300_000_000
        assert (batching.priority_levels, batching.default_priority_level) == (2, 1)
