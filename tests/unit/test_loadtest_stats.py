"""Latency statistics: nearest-rank percentiles and the per-run summary."""

from __future__ import annotations

import numpy as np
import pytest

from matteserve.loadtest.stats import LatencySummary, RunSummary, Sample, percentile


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 4321])
@pytest.mark.parametrize("q", [0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0])
def test_percentile_matches_numpys_nearest_rank_method(n: int, q: float) -> None:
    values = np.random.default_rng(n).lognormal(3.0, 1.0, size=n)
    # numpy computes the rank in binary floating point, so 99.9% of 1000 becomes rank 1000.0000000000001
    # and rounds up; nudging q down a hair gives numpy the exact rank that percentile() computes.
    expected = np.percentile(values, max(q - 1e-9, 0.0), method="inverted_cdf")
    assert percentile(sorted(values.tolist()), q) == pytest.approx(expected, rel=0, abs=0)


def test_every_reported_percentile_is_a_latency_some_request_had() -> None:
    values = [float(x) for x in range(1, 1001)]
    summary = LatencySummary.of([v / 1000.0 for v in values])
    for figure in (summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.p999_ms, summary.max_ms):
        assert figure == pytest.approx(round(figure))
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.p999_ms) == pytest.approx((500, 900, 990, 999))
    assert summary.max_ms == pytest.approx(1000)
    assert summary.mean_ms == pytest.approx(500.5)


def test_percentile_rejects_empty_input_and_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0-100"):
        percentile([1.0], 101)


def test_an_empty_run_summarises_to_zeros() -> None:
    assert LatencySummary.of([]) == LatencySummary(0, 0, 0, 0, 0, 0, 0)


def test_run_summary_counts_every_measured_request_once_and_excludes_warmup() -> None:
    samples = [
        Sample(0.0, 0.0, 0.5, "OK", warmup=True),
        Sample(0.2, 0.2, 0.3, "INVALID_ARGUMENT", warmup=True),
        Sample(1.0, 1.0, 1.2, "OK"),
        Sample(1.1, 1.1, 1.5, "OK"),
        Sample(1.2, 1.2, 1.21, "INVALID_ARGUMENT"),
        Sample(1.3, 1.3, 1.31, "INVALID_ARGUMENT"),
        Sample(1.4, 1.4, 2.0, "UNAVAILABLE"),
    ]
    s = RunSummary.of("closed", 2, samples, window_start=1.0, window_end=2.0)
    assert (s.sent, s.ok, s.warmup_sent) == (5, 2, 2)
    assert s.errors == {"INVALID_ARGUMENT": 2, "UNAVAILABLE": 1}
    assert s.sent == s.ok + sum(s.errors.values())
    # Latency covers OK responses only: the fast failures would flatter it.
    assert s.latency.count == 2
    assert s.latency.max_ms == pytest.approx(400)


def test_throughput_counts_ok_completions_inside_the_window_including_warmup_stragglers() -> None:
    samples = [
        Sample(0.5, 0.5, 1.5, "OK", warmup=True),  # completes inside the window: counts
        Sample(0.1, 0.1, 0.9, "OK", warmup=True),  # completes before it: does not
        Sample(1.0, 1.0, 2.0, "OK"),
        Sample(2.0, 2.0, 3.0, "OK"),
        Sample(2.5, 2.5, 3.5, "OK"),  # completes after the window
        Sample(2.6, 2.6, 2.7, "INTERNAL"),  # inside, but not OK
    ]
    s = RunSummary.of("closed", 1, samples, window_start=1.0, window_end=3.0)
    assert s.window_s == pytest.approx(2.0)
    assert s.throughput_rps == pytest.approx(3 / 2.0)


def test_latency_and_send_lag_run_from_the_intended_send_time() -> None:
    late = Sample(intended=10.0, sent=10.3, done=10.5, code="OK")
    assert late.latency == pytest.approx(0.5)
    assert late.send_lag == pytest.approx(0.3)
    s = RunSummary.of("open", 5, [late, Sample(11.0, 11.0, 11.1, "OK")], 10.0, 12.0)
    assert s.send_lag_max_ms == pytest.approx(300)
    assert s.send_lag_mean_ms == pytest.approx(150)
