"""What a GPU container does at start, decided on a CPU: which TensorRT it has, where its engine lives
in a shared store, whether the stored engine is reused, that everything else in the repository comes
from the running installation, and FP32 when FP16 fails the parity gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matteserve import contract
from matteserve.build import configs, repository, weights
from matteserve.build.configs import ServingPlan, Target
from matteserve.build.gpu import build, engine, parity, stamp, store
from matteserve.build.gpu.stamp import EngineMismatch, EngineStamp, Runtime
from matteserve.errors import ModelError
from matteserve.model_repository import ADAPTERS
from matteserve.zoo import get_spec

SPEC = get_spec("u2netp")
H100 = Runtime("10.8.0", "9.0", "NVIDIA H100 80GB HBM3")


class FakeLibrary:
    def __init__(self, version: int) -> None:
        self.version = version

    def getInferLibVersion(self) -> int:
        return self.version


def loader(available: dict[str, int]) -> Any:
    def load(name: str) -> FakeLibrary:
        if name not in available:
            raise OSError(f"{name}: cannot open shared object file")
        return FakeLibrary(available[name])

    return load


@pytest.mark.parametrize(
    ("libraries", "version"),
    [
        ({"libnvinfer.so.11": 110002}, "11.0.2"),
        ({"libnvinfer.so.10": 100800}, "10.8.0"),
        ({"libnvinfer.so.8": 8601}, "8.6.1"),
        ({"libnvinfer.so.11": 110100, "libnvinfer.so.10": 100800}, "11.1.0"),
        ({}, None),
    ],
)
def test_the_node_tensorrt_is_read_from_libnvinfer_10_or_11(libraries: dict[str, int], version: str | None) -> None:
    assert stamp.tensorrt_library_version(load=loader(libraries)) == version


def test_the_tensorrt_package_must_be_the_release_of_libnvinfer() -> None:
    assert stamp.agreed_tensorrt("10.8.0", "10.8.0.43") == "10.8.0"
    assert stamp.agreed_tensorrt(None, "10.8.0.43") == "10.8.0.43"
    assert stamp.agreed_tensorrt("10.8.0", None) == "10.8.0"
    with pytest.raises(EngineMismatch, match=r"package is 10\.9\.0\.34 but this node's libnvinfer is 10\.8\.0"):
        stamp.agreed_tensorrt("10.8.0", "10.9.0.34")


def test_engines_and_timing_caches_are_keyed_by_gpu_model_and_tensorrt(tmp_path: Path) -> None:
    a10 = Runtime("10.8.0", "8.6", "NVIDIA A10")
    a40 = Runtime("10.8.0.43", "8.6", "NVIDIA A40")  # same capability, another GPU
    newer = Runtime("10.9.0", "9.0", "NVIDIA H100 80GB HBM3")
    keys = {r.key for r in (H100, a10, a40, newer)}
    assert len(keys) == 4
    assert H100.key == "sm90-nvidia-h100-80gb-hbm3-trt10.8.0"
    assert Runtime("10.8.0.43", "9.0", "NVIDIA H100 80GB HBM3").key == H100.key, "the build number does not matter"
    stores = {store.entry(tmp_path, SPEC, r) for r in (H100, a10, a40, newer)}
    caches = {store.timing_cache(tmp_path, r) for r in (H100, a10, a40, newer)}
    assert len(stores) == len(caches) == 4


def gpu_plan() -> ServingPlan:
    return ServingPlan.for_host(
        SPEC, Target.GPU, cores=4, max_batch_size=build.GPU_MAX_BATCH, engine_files=(("9.0", "model.sm90.plan"),)
    )


def fill_store(engines: Path, runtime: Runtime, tensorrt: str | None = None, precision: str = "fp16") -> Path:
    """A stored engine as an earlier start on this GPU left it (the plan bytes are a stand-in)."""
    folder = store.entry(engines, SPEC, runtime)
    folder.mkdir(parents=True)
    (folder / store.PLAN).write_bytes(b"serialized engine")
    (folder / store.GRAPH).write_bytes(b"folded onnx")
    EngineStamp(
        plan=store.PLAN,
        tensorrt=tensorrt or runtime.tensorrt,
        compute_capability=runtime.compute_capability,
        source_sha256=weights.file_digest(weights.weights_path(SPEC)),
        graph_sha256=weights.file_digest(folder / store.GRAPH),
        options=build.engine_recipe(gpu_plan(), 4096, 3) | {"typing": "strongly-typed"},
        gpu=runtime.gpu,
        precision=precision,
        build={"fp16_fallback": None if precision == "fp16" else "the FP16 engine failed the parity gate"},
    ).write(folder)
    return folder


def old_repository(out: Path) -> None:
    """What an older image left on the volume: its own adapters and configs."""
    for model in (contract.PREPROCESS, contract.POSTPROCESS):
        (out / model / "1").mkdir(parents=True)
        (out / model / "1" / "model.py").write_text("# the adapter of an older matteserve\n")
        (out / model / "config.pbtxt").write_text('name: "old"\n')
    (out / repository.MANIFEST).write_text(json.dumps({"target": "gpu", "adapters_sha256": "older"}))


def test_a_start_reuses_the_stored_engine_and_refreshes_everything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATTESERVE_CPUS", "6")
    engines, out = tmp_path / "volume" / "engines", tmp_path / "pod" / "u2netp-gpu"
    fill_store(engines, H100)
    old_repository(out)
    build.build_gpu(SPEC, out, if_stale=True, engines=engines, runtime=H100)  # no TensorRT here: must not build

    for model in (contract.PREPROCESS, contract.POSTPROCESS):
        assert (out / model / "1" / "model.py").read_bytes() == (ADAPTERS / model / "1" / "model.py").read_bytes()
    assert repository.is_current(out)
    steps = (contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS)
    cfgs = {m: configs.from_pbtxt((out / m / "config.pbtxt").read_text()) for m in steps}
    assert cfgs[contract.POSTPROCESS].instance_group[0].count == 3, "rendered for this container's 6 CPUs"
    assert dict(cfgs[contract.MATTING].cc_model_filenames) == {"9.0": "model.sm90.plan"}
    assert (out / contract.MATTING / "1" / "model.sm90.plan").read_bytes() == b"serialized engine"
    served = stamp.check_repository(out, H100)
    assert served is not None
    assert served.plan == "model.sm90.plan"
    manifest = repository.read_manifest(out)
    assert manifest is not None
    assert (manifest["precision"], manifest["gpu"]) == ("fp16", H100.gpu)


def test_an_fp32_fallback_is_carried_into_the_manifest_and_said_by_check_engine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engines, out = tmp_path / "engines", tmp_path / "u2netp-gpu"
    fill_store(engines, H100, precision="fp32")
    build.build_gpu(SPEC, out, if_stale=True, engines=engines, runtime=H100, cores=2)
    manifest = repository.read_manifest(out)
    assert manifest is not None
    assert manifest["precision"] == "fp32"
    assert "parity gate" in manifest["fp16_fallback"]
    assert "serves an FP32 engine" in caplog.text


@pytest.mark.parametrize(
    ("runtime", "stored_tensorrt"),
    [(H100, "10.7.0"), (Runtime("10.8.0", "9.0", "NVIDIA H200"), None)],
    ids=["another TensorRT", "another GPU model"],
)
def test_an_engine_from_another_tensorrt_or_gpu_is_rebuilt_not_reused(
    tmp_path: Path, runtime: Runtime, stored_tensorrt: str | None
) -> None:
    engines, out = tmp_path / "engines", tmp_path / "u2netp-gpu"
    fill_store(engines, H100, tensorrt=stored_tensorrt)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="needs TensorRT's Python package"):
            build.build_gpu(SPEC, out, if_stale=True, engines=engines, runtime=runtime, cores=2)
        assert not out.exists(), "nothing is served until an engine for this node exists"
    else:
        pytest.skip("TensorRT is installed: tests/gpu builds real engines")


def test_other_build_options_are_not_reused(tmp_path: Path) -> None:
    folder = fill_store(tmp_path, H100)
    source = weights.file_digest(weights.weights_path(SPEC))
    assert store.find(folder, H100, source, build.engine_recipe(gpu_plan(), 4096, 3)) is not None
    assert store.find(folder, H100, source, build.engine_recipe(gpu_plan(), 4096, 5)) is None
    assert store.find(folder, H100, "another model", build.engine_recipe(gpu_plan(), 4096, 3)) is None
    (folder / store.GRAPH).write_bytes(b"half written")
    assert store.find(folder, H100, source, build.engine_recipe(gpu_plan(), 4096, 3)) is None


def report(passed: bool) -> parity.ParityReport:
    photo = parity.PhotoParity("logo-white", 0.0 if passed else 0.1, 0.0, 0.0, 0.03)
    return parity.ParityReport("test", (photo,), *parity.fp16_limits())


def graphs(fp16_passed: bool) -> build.Graphs:
    return build.Graphs(Path("fp32.onnx"), Path("fp16.onnx"), (), (report(True), report(fp16_passed)), {})


def candidate(typing: engine.Typing, passed: bool) -> build.Candidate:
    options = engine.EngineOptions(320, 320, 32, 8, typing=typing)
    built = engine.BuiltEngine(Path(f"{typing.value}.plan"), "10.8.0", 1.0, 1)
    return build.Candidate(built, options, Path("g.onnx"), (report(passed),))


@pytest.mark.parametrize(
    ("graph_ok", "engine_ok", "built", "precision"),
    [
        (True, True, [engine.Typing.STRONG], "fp16"),
        (True, False, [engine.Typing.STRONG, engine.Typing.FP32], "fp32"),
        (False, True, [engine.Typing.FP32], "fp32"),
    ],
)
def test_fp16_is_served_only_when_it_passes_the_gate_else_fp32_loudly(
    graph_ok: bool, engine_ok: bool, built: list[engine.Typing], precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[engine.Typing] = []

    def build_one(typing: engine.Typing) -> build.Candidate:
        tried.append(typing)
        return candidate(typing, engine_ok or typing is engine.Typing.FP32)

    chosen = build.choose_engine(graphs(graph_ok), engine.Typing.STRONG, build_one)
    assert tried == built
    assert chosen.precision == precision
    assert (chosen.fallback is None) == (precision == "fp16")
    assert ("FP16 IS NOT SERVED" in caplog.text) == (precision == "fp32")


def test_an_fp32_engine_that_fails_too_writes_nothing() -> None:
    with pytest.raises(ModelError, match="FP32 TensorRT engine does not match"):
        build.choose_engine(graphs(False), engine.Typing.STRONG, lambda typing: candidate(typing, False))


def test_the_gate_fails_mattes_that_the_mean_and_off_edge_checks_pass() -> None:
    """A sliver of the object lost along its outline, or edges gone wrong in a few places: the mean
    stays under 1/255 and nothing changes off the edges, so only IoU and the in-edge percentile see it."""
    alpha = np.zeros((64, 64))
    alpha[16:48, 16:48] = 1.0
    sliver = alpha.copy()
    sliver[16:18, 16:23] = 0.0
    noisy = alpha.copy()
    band = np.flatnonzero(parity.edges(alpha))
    noisy.flat[band[::30]] = 0.6  # 1 edge pixel in 30 off by 0.4-0.6
    mean_limit, off_edge_limit, *_ = parity.fp16_limits()
    for wrong in (sliver, noisy):
        found = parity.compare("p", alpha, wrong)
        assert found.mean_abs <= mean_limit
        assert found.max_abs_off_edge <= off_edge_limit
        assert not parity.ParityReport("t", (found,), *parity.fp16_limits()).passed
    assert parity.compare("p", alpha, sliver).iou < parity.FP16_MIN_IOU
    assert parity.compare("p", alpha, noisy).edge_p99 > parity.FP16_EDGE_P99
    assert parity.ParityReport("t", (parity.compare("p", alpha, alpha),), *parity.fp16_limits()).passed


def test_the_batch_gate_runs_batches_of_n_and_reports_each_photo_worst_copy() -> None:
    pixels = {name: np.full((4, 4, 3), i * 40, np.uint8) for i, name in enumerate("abc")}
    seen: list[int] = []

    def expected(px: np.ndarray) -> np.ndarray:
        return px[..., 0].astype(np.float64) / 255

    def actual(px: np.ndarray) -> np.ndarray:
        seen.append(len(px))
        out = px[..., 0].astype(np.float64) / 255
        if len(px) > 1:
            out[-1] += 0.5  # the batch kernel is wrong for its last image only
        return out

    one = parity.check("x", expected, actual, pixels, *parity.fp16_limits())
    many = parity.check("x", expected, actual, pixels, *parity.fp16_limits(), batch=8)
    assert one.passed
    assert seen == [1, 1, 1, 8]
    assert many.batch == 8
    assert not many.passed
    assert [p.photo for p in many.photos] == ["a", "b", "c"]


def test_the_build_reads_baked_photo_sets_and_refuses_a_folder_without_a_gate_set(tmp_path: Path) -> None:
    from PIL import Image

    for folder, names in (("calibration", ("a", "b")), ("gate", ("logo-white",))):
        (tmp_path / folder).mkdir()
        for name in names:
            Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / folder / f"{name}.png")
    sets = build.photo_sets(tmp_path)
    assert (sorted(sets.calibration), sorted(sets.gate)) == (["a", "b"], ["logo-white"])
    assert sets.gate["logo-white"].shape == (30, 40, 3)
    for png in (tmp_path / "gate").iterdir():
        png.unlink()
    with pytest.raises(ModelError, match="both calibration/ and gate/"):
        build.photo_sets(tmp_path)


def test_a_new_engine_replaces_the_store_entry_whole(tmp_path: Path) -> None:
    folder = fill_store(tmp_path, H100)
    plan, graph = tmp_path / "new.plan", tmp_path / "new.onnx"
    plan.write_bytes(b"new engine")
    graph.write_bytes(b"new graph")
    new = EngineStamp(store.PLAN, "10.8.0", "9.0", "src", weights.file_digest(graph), gpu=H100.gpu, precision="fp32")
    store.put(folder, plan, graph, new)
    assert (folder / store.PLAN).read_bytes() == b"new engine"
    assert EngineStamp.read(folder / (store.PLAN + stamp.STAMP_SUFFIX)).precision == "fp32"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name], "no staging left beside it"
