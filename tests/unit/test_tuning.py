"""The one model-only timer and the CPU build's batch-size choice made from it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from matteserve.build import onnx_prep, tuning
from matteserve.build.tuning import BatchMeasurement
from matteserve.runtimes import RuntimeSettings

from .test_onnx_prep import SPEC, tiny_model  # type: ignore[import-not-found]


@pytest.mark.parametrize(("batch", "at_least", "calls"), [(1, 1, 2), (1, 5, 6), (2, 5, 4), (4, 4, 2)])
def test_the_timer_warms_up_once_then_runs_until_enough_images(batch: int, at_least: int, calls: int) -> None:
    ran: list[int] = []
    rate = tuning.images_per_s(lambda: ran.append(batch), batch, seconds=0, at_least=at_least)
    assert len(ran) == calls
    assert rate > 0


def test_the_timer_runs_until_its_seconds_have_passed_not_counting_the_warm_up() -> None:
    def run() -> None:
        time.sleep(0.01)

    start = time.perf_counter()
    rate = tuning.images_per_s(run, 3, seconds=0.05)
    assert time.perf_counter() - start >= 0.06  # 0.01 s of warm-up, then at least 0.05 s timed
    assert 0 < rate <= 300  # 3 images per call of at least 0.01 s


def test_the_largest_batch_within_reach_of_the_best_is_kept() -> None:
    assert tuning.choose([BatchMeasurement(1, 10.0), BatchMeasurement(2, 9.6), BatchMeasurement(4, 9.4)]) == 2
    assert tuning.choose([BatchMeasurement(1, 10.0), BatchMeasurement(2, 8.0), BatchMeasurement(4, 7.0)]) == 1


def test_every_candidate_batch_is_measured_on_random_or_given_inputs(tmp_path: Path) -> None:
    onnx = onnx_prep.prepare(tiny_model(tmp_path), SPEC, tmp_path / "prepared.onnx").path
    settings = RuntimeSettings(threads=1)
    random = tuning.measure(onnx, SPEC, settings, seconds=0)
    pixels = np.random.default_rng(1).normal(size=(3, 8, 8)).astype(np.float32)
    given = tuning.measure(onnx, SPEC, settings, seconds=0, inputs=[pixels])
    for measured in (random, given):
        assert [m.batch for m in measured] == list(tuning.CANDIDATES)
        assert all(m.images_per_s > 0 for m in measured)
