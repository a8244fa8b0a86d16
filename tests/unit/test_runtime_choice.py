"""The CPU build's choice of runtime, precision and thread layout: the decision as pure functions of
given measurements, the parity gate, the fallback on CPUs without BF16, and what the build stores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteserve import contract
from matteserve.build import configs, islands, photos, quantize, repository, weights
from matteserve.build import runtime_choice as rc
from matteserve.build.builder import build
from matteserve.build.repository import read_manifest
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.runtimes import Precision, Runtime, RuntimeSettings, int8_files
from matteserve.stages import MattingRunner
from matteserve.zoo import get_spec

from .test_onnx_prep import SPEC, tiny_model  # type: ignore[import-not-found]

ALL = rc.Capabilities(bf16=True, vnni=True, openvino=True)
PLAIN = rc.Capabilities(bf16=False, vnni=False, openvino=True)  # e.g. an AVX2-only CPU
QUANTISING = rc.Capabilities(bf16=True, vnni=True, openvino=True, nncf=True)

ORT = rc.Candidate(Runtime.ONNXRUNTIME, Precision.FP32, 2, 1)
OV = rc.Candidate(Runtime.OPENVINO, Precision.FP32, 1, 2)
BF16 = rc.Candidate(Runtime.OPENVINO, Precision.BF16, 1, 2)


def report(candidate: rc.Candidate, ious: list[float], mean_abs: float = 0.5, p99: float = 4.0) -> rc.GateReport:
    photos = tuple(rc.PhotoGate(f"p{i}", iou, mean_abs, p99) for i, iou in enumerate(ious))
    return rc.GateReport(candidate.runtime, candidate.precision, photos)


def test_the_fastest_end_to_end_candidate_whose_gate_passed_is_chosen() -> None:
    measured = [rc.Measurement(ORT, 5.0), rc.Measurement(OV, 6.0), rc.Measurement(BF16, 9.0)]
    passing = [report(OV, [1.0, 1.0]), report(BF16, [0.99, 0.97])]
    assert rc.choose(measured, passing) == BF16
    failing = [report(OV, [1.0, 1.0]), report(BF16, [0.99, 0.94])]  # one photo under the minimum
    assert rc.choose(measured, failing) == OV


def test_end_to_end_speed_decides_not_the_engine() -> None:
    """A faster engine in a layout that starves pre/post loses to a slower one that leaves room."""
    starved = rc.Candidate(Runtime.OPENVINO, Precision.FP32, 2, 1)
    measured = [rc.Measurement(starved, 3.1), rc.Measurement(ORT, 3.4)]
    assert rc.choose(measured, [report(starved, [1.0])]) == ORT


def test_the_gate_holds_each_limit_on_its_own() -> None:
    assert report(BF16, [0.99, 0.99]).passed
    assert not report(BF16, [0.975, 0.975]).passed  # mean IoU under 0.98
    assert not report(BF16, [1.0, 1.0, 1.0, 0.94]).passed  # mean fine, one photo under 0.95
    assert not report(BF16, [1.0, 1.0], mean_abs=0.8).passed  # mean abs error over 0.75/255
    assert not report(BF16, [1.0, 1.0], p99=9.0).passed  # 1% of the pixels off by more than 8/255
    one_bad = rc.GateReport(*BF16.engine, (rc.PhotoGate("a", 1.0, 0.1, 1.0), rc.PhotoGate("b", 1.0, 0.9, 1.0)))
    assert not one_bad.passed  # the limits hold on each photo, not on the average


def test_the_photos_furthest_past_any_limit_rank_first() -> None:
    """Island search probes the photos a precision damages most: by any limit, not IoU alone."""
    edges = rc.PhotoGate("edges", 1.0, 0.3, 12.0)  # the same foreground, its edges 12/255 off
    overlap = rc.PhotoGate("overlap", 0.96, 0.3, 4.0)
    assert edges.excess == pytest.approx(1.5)  # p99 at 1.5x its limit
    assert overlap.excess == pytest.approx(0.8)  # IoU 0.96: 80% of the way to the minimum's 0.95
    report = rc.GateReport(*BF16.engine, (edges, overlap))
    assert report.excess == pytest.approx(1.5)  # the worst photo's; the mean IoU, 0.98, is at its limit
    assert not report.passed
    fine = rc.GateReport(*BF16.engine, (rc.PhotoGate("fine", 0.99, 0.3, 4.0),))
    assert fine.excess == pytest.approx(0.5)
    assert fine.passed


def test_gate_measures_foreground_overlap_and_mean_error_per_photo() -> None:
    expected = np.zeros((10, 10), np.uint8)
    expected[:, :5] = 255
    actual = expected.copy()
    actual[:, 5] = 200  # one more column counted as foreground
    result = rc.gate(*BF16.engine, {"a": expected}, {"a": actual})
    assert result.photos[0].iou == pytest.approx(50 / 60)
    assert result.mean_abs == pytest.approx(200 * 10 / 100)
    assert result.p99 == 200  # 10% of the pixels are 200 off
    assert not result.passed
    edge = expected.copy()
    edge[0, 5] = 100  # one pixel of 100 is 1% of 100: the 99th percentile interpolates below it
    assert rc.gate(*BF16.engine, {"a": expected}, {"a": edge}).p99 == pytest.approx(1.0)


def test_a_cpu_without_bf16_gets_fp32_candidates_only() -> None:
    assert {c.precision for c in rc.candidates(2, PLAIN)} == {Precision.FP32}
    assert {c.engine for c in rc.candidates(2, ALL)} == {
        (Runtime.ONNXRUNTIME, Precision.FP32),
        (Runtime.OPENVINO, Precision.FP32),
        (Runtime.OPENVINO, Precision.BF16),
    }
    without_openvino = rc.Capabilities(bf16=True, vnni=True, openvino=False)
    assert {c.engine for c in rc.candidates(2, without_openvino)} == {rc.REFERENCE}


def test_asking_for_bf16_where_the_cpu_has_none_says_why() -> None:
    with pytest.raises(ModelError, match="no AVX-512 BF16"):
        rc.candidates(2, PLAIN, precision=Precision.BF16)


def test_int8_is_a_candidate_only_with_vnni_openvino_and_nncf() -> None:
    assert rc.INT8 not in {c.engine for c in rc.candidates(2, ALL)}  # no nncf
    assert rc.INT8 in {c.engine for c in rc.candidates(2, QUANTISING)}
    assert rc.INT8 not in {c.engine for c in rc.candidates(2, replace(QUANTISING, vnni=False))}
    with pytest.raises(ModelError, match="no VNNI; the nncf package is not installed"):
        rc.candidates(2, PLAIN, precision=Precision.INT8)
    assert rc.Capabilities.detect("flags : avx2").nncf  # the dev install has it


def test_an_int8_model_that_nncf_had_to_make_all_fp32_is_refused(tmp_path: Path) -> None:
    """A 1x1-conv model: NNCF puts its one quantised operation back into FP32 to meet the limit."""
    with pytest.raises(ModelError, match="INT8 quantisation failed: no operation stays INT8"):
        build(
            SPEC, tmp_path / "repo", onnx=tiny_model(tmp_path), max_batch_size=1, precision=Precision.INT8,
            measure_seconds=0, capabilities=QUANTISING,
        )  # fmt: skip


def test_an_int8_repository_serves_its_quantised_model_and_says_when_it_is_missing(tmp_path: Path) -> None:
    import nncf
    import openvino as ov

    onnx = tiny_model(tmp_path)
    rng = np.random.default_rng(0)
    samples = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    quantised = nncf.quantize(ov.Core().read_model(str(onnx)), nncf.Dataset(samples), subset_size=4)
    assert quantize.quantised_operations(quantised) > 0
    ov.save_model(quantised, str(int8_files(onnx)[0]), compress_to_fp16=False)
    plan = configs.ServingPlan.for_host(
        SPEC, configs.Target.CPU, max_batch_size=1, runtime=Runtime.OPENVINO, precision=Precision.INT8
    )
    repo = repository.write(plan, onnx, tmp_path / "repo", {})
    served = repo / contract.MATTING / "1" / plan.onnx_filename
    int8 = MattingRunner(served, SPEC, settings=RuntimeSettings(Runtime.OPENVINO, Precision.INT8, 1))
    fp32 = MattingRunner(served, SPEC, threads=1)
    for x in samples:  # quantised: close to FP32, and not FP32 itself
        assert 0 < np.abs(int8.run([x[0]])[0].astype(int) - fp32.run([x[0]])[0]).mean() <= 12
    int8_files(served)[0].unlink()
    with pytest.raises(ModelError, match=r"model-int8.xml \(and its .bin\) is missing: rebuild"):
        MattingRunner(served, SPEC, settings=RuntimeSettings(Runtime.OPENVINO, Precision.INT8, 1))


def test_the_quantiser_scores_a_matte_by_overlap_and_by_error() -> None:
    a = np.zeros((10, 10), np.uint8)
    a[:, :5] = 255
    assert quantize.score(a, a) == 1.0
    assert quantize.score(a, np.zeros_like(a)) == 0.0  # no foreground left
    off_by_5 = a + np.uint8(5) * (a == 0)  # same side of 0.5 everywhere: scored by its errors
    assert quantize.score(a, off_by_5) == pytest.approx(1 - quantize.MAX_DROP * 2.5 / rc.MEAN_ABS_LIMIT)
    edge = a.copy()
    edge[0, 5] = 100  # a mean of 1/255 and a 99th percentile of 1/255
    assert quantize.score(a, edge) == pytest.approx(1 - quantize.MAX_DROP * 1.0 / rc.MEAN_ABS_LIMIT)
    rim = a.copy()
    rim[:2, 5] = 40  # 2% of the pixels 40 off: a mean of 0.8/255, but the 99th percentile is 40/255
    assert quantize.score(a, rim) == pytest.approx(1 - quantize.MAX_DROP * 40 / rc.P99_LIMIT)


def test_fold_input_is_refused_with_int8(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not with --precision int8"):
        build(SPEC, tmp_path / "repo", onnx=tiny_model(tmp_path), precision=Precision.INT8, fold_input=True)


def test_capabilities_come_from_the_cpu_flags() -> None:
    assert rc.Capabilities.detect("flags : fpu avx2 avx512f avx512_vnni avx512_bf16").bf16
    plain = rc.Capabilities.detect("flags : fpu avx2 fma")
    assert (plain.bf16, plain.vnni) == (False, False)


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_layouts_never_ask_for_more_threads_than_cores(cores: int) -> None:
    found = rc.layouts(cores)
    assert (cores, 1) in found
    assert all(threads * instances <= cores and threads >= 1 for threads, instances in found)


def test_onnxruntime_refuses_a_precision_it_cannot_run() -> None:
    with pytest.raises(ModelError, match="needs openvino"):
        RuntimeSettings(Runtime.ONNXRUNTIME, Precision.BF16)


def test_gate_photos_have_hair_and_product_shots_on_white_flat_and_dark_backgrounds() -> None:
    found = photos.gate_photos()
    assert {"astronaut", "chelsea", "logo-on-white", "logo-on-dark", "cat-on-flat", "product-on-white"} <= set(found)
    for name, px in found.items():
        assert (px.dtype, px.ndim, px.shape[2]) == (np.uint8, 3, 3), name
    assert (found["logo-on-white"][:5, :5] == 255).all()  # the corner is the white backdrop
    assert found["cat-on-dark"][:3, :3].max() <= 30
    assert (found["cat-on-flat"][0, 0] == photos.FLAT).all()


def test_openvino_fp32_gives_onnxruntimes_mattes_on_the_real_model() -> None:
    spec = get_spec("u2netp")
    path = weights.weights_path(spec)
    pixels = photos.gate_photos()
    inputs = [
        tensor.normalise(tensor.resize_for_model(Image.fromarray(pixels[name]), spec, (1, 1)), spec)
        for name in ("astronaut", "logo-on-dark")
    ]
    onnxruntime = MattingRunner(path, spec, threads=2)
    reference = [onnxruntime.run([x])[0] for x in inputs]
    openvino = MattingRunner(path, spec, settings=RuntimeSettings(Runtime.OPENVINO, threads=2, spin=False))
    for expected, x in zip(reference, inputs, strict=True):
        assert np.abs(openvino.run([x])[0].astype(int) - expected).max() <= 1


def test_build_without_bf16_falls_back_to_fp32_and_stores_the_choice(tmp_path: Path) -> None:
    repo = build(
        SPEC, tmp_path / "repo", onnx=tiny_model(tmp_path), max_batch_size=2, measure_seconds=0.05, capabilities=PLAIN
    )
    manifest = read_manifest(repo)
    assert manifest is not None
    choice = manifest["runtime_choice"]
    assert choice["capabilities"] == {"bf16": False, "vnni": False, "openvino": True, "nncf": False}
    assert choice["precision"] == "fp32"
    assert {g["precision"] for g in choice["gates"]} == {"fp32"}
    assert all(g["passed"] for g in choice["gates"])
    assert {m["precision"] for m in choice["end_to_end"]} == {"fp32"}
    assert all(m["images_per_s"] > 0 for m in choice["end_to_end"])
    best = max(choice["end_to_end"], key=lambda m: m["images_per_s"])
    assert (best["runtime"], best["threads"], best["instances"]) == (
        choice["runtime"],
        choice["threads"],
        choice["instances"],
    )
    matting = configs.from_pbtxt((repo / contract.MATTING / "config.pbtxt").read_text())
    assert matting.parameters["runtime"].string_value == choice["runtime"]
    assert matting.parameters["threads"].string_value == str(choice["threads"])
    assert matting.instance_group[0].count == choice["instances"]


def test_precision_fp32_with_no_measuring_keeps_the_onnxruntime_reference(tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path)
    repo = build(SPEC, tmp_path / "repo", onnx=onnx, max_batch_size=1, precision=Precision.FP32, measure_seconds=0)
    manifest = read_manifest(repo)
    assert manifest is not None
    assert (manifest["runtime_choice"]["runtime"], manifest["runtime_choice"]["precision"]) == ("onnxruntime", "fp32")
    assert manifest["runtime_choice"]["measured"] is False


def test_the_layers_bf16_damages_most_are_kept_in_fp32_until_the_gate_passes() -> None:
    """A model whose nodes 500-750 only pass in FP32 together (as U2-Net-p's decoder does)."""
    sensitive = [(500, 625), (625, 750)]
    tried: list[tuple[tuple[int, int], ...]] = []

    def trial(fp32: tuple[tuple[int, int], ...]) -> rc.GateReport:
        tried.append(fp32)
        covered = sum(1 for s in sensitive if any(a <= s[0] and s[1] <= b for a, b in fp32))
        iou = {0: 0.93, 1: 0.975, 2: 0.995}[covered]
        return rc.GateReport(*BF16.engine, (rc.PhotoGate("p", iou, 0.2, 3.0),), fp32_nodes=fp32)

    found = islands.fp32_islands(1000, trial)
    assert found is not None
    assert found.passed
    assert found.fp32_nodes == ((500, 750),)  # the two chunks, joined into one FP32 piece
    assert len(tried) == 8 + 2 + 2  # each chunk alone, then the two worst, then neither half passes


def test_an_fp32_island_shrinks_to_the_half_that_still_passes() -> None:
    def trial(fp32: tuple[tuple[int, int], ...]) -> rc.GateReport:
        covered = any(a <= 570 and b >= 600 for a, b in fp32)
        return rc.GateReport(*BF16.engine, (rc.PhotoGate("p", 0.99 if covered else 0.93, 0.2, 3.0),), fp32_nodes=fp32)

    found = islands.fp32_islands(1000, trial)
    assert found is not None
    assert found.fp32_nodes == ((562, 625),)  # chunk 500-625, then its right half; its halves fail


def test_no_fp32_island_is_offered_when_only_fp32_everywhere_passes() -> None:
    def trial(fp32: tuple[tuple[int, int], ...]) -> rc.GateReport:
        return rc.GateReport(*BF16.engine, (rc.PhotoGate("p", 0.9, 5.0, 40.0),), fp32_nodes=fp32)

    assert islands.fp32_islands(80, trial) is None


def test_measured_fp32_islands_reach_the_served_candidates() -> None:
    island = rc.Candidate(Runtime.OPENVINO, Precision.BF16, 1, 2, fp32_nodes=((10, 20),))
    assert island.settings().fp32_nodes == ((10, 20),)
    assert "nodes 10-20 in fp32" in island.label()
    measured = [rc.Measurement(ORT, 5.0), rc.Measurement(island, 7.0)]
    full = rc.GateReport(*BF16.engine, (rc.PhotoGate("p", 0.93, 2.0, 30.0),))
    mixed = rc.GateReport(*BF16.engine, (rc.PhotoGate("p", 0.995, 0.2, 3.0),), fp32_nodes=((10, 20),))
    assert rc.choose(measured, [full, mixed]) == island
    assert rc.choose(measured, [full]) == ORT


def test_a_cpu_build_is_current_only_on_a_cpu_with_the_same_bf16_and_vnni_and_by_todays_gate() -> None:
    caps = {"bf16": True, "vnni": True, "openvino": True, "nncf": True}
    manifest = {"runtime_choice": {"capabilities": caps, "gate_limits": rc.gate_limits()}}
    assert repository.choice_holds(manifest, "flags : avx2 avx512_vnni avx512_bf16")
    assert not repository.choice_holds(manifest, "flags : avx2 avx512_vnni")  # no BF16 here
    assert not repository.choice_holds(manifest, "flags : avx2")  # e.g. a volume moved to an older host
    assert repository.choice_holds({"target": "gpu"}, "flags : avx2")  # no CPU runtime was chosen
    # The first gate's limits (a mean of 3/255 over the photos, no 99th percentile) let INT8 through
    first_gate = {"iou_mean": 0.98, "iou_min": 0.95, "mean_abs_255": 3.0}
    older = {"runtime_choice": {"capabilities": caps, "gate_limits": first_gate}}
    assert not repository.choice_holds(older, "flags : avx2 avx512_vnni avx512_bf16")
