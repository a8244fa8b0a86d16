"""Triton's own counters, scraped before and after a run, so a report says where the time went.

Per model (the ensemble and each step): requests, inferences / executions (= average batch size),
and the mean queue, compute and end-to-end milliseconds per successful request. Triton adds a
batch's compute time to every request in it, so ``compute_infer_ms`` is the time of the execution a
request rode in; divided by ``avg_batch`` it is the cost of one image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.samples import Sample

from matteserve import contract
from matteserve.loadtest import prometheus

logger = logging.getLogger(__name__)

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
PIPELINE_ORDER = (contract.ENSEMBLE, contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS)

# (metric name, model) -> value, summed over the other labels (version, failure reason).
Snapshot = dict[tuple[str, str], float]


def parse(found: Iterable[Sample]) -> Snapshot:
    out: Snapshot = {}
    for sample in found:
        name = sample.name.removesuffix("_total")
        if name in COUNTERS and "model" in sample.labels:
            key = (name, sample.labels["model"])
            out[key] = out.get(key, 0.0) + sample.value
    return out


def scrape(url: str, timeout: float = 5.0) -> Snapshot | None:
    found = prometheus.scrape(url, timeout)
    return parse(found) if found is not None else None


def scrape_settled(url: str, before: Snapshot | None, answered: int, wait_s: float = 2.0) -> Snapshot | None:
    """The snapshot after a run in which the ensemble answered ``answered`` requests successfully.

    Triton counts a request once its response is on its way, so a scrape taken as the last answer
    arrives can miss it: scrape again (for at most ``wait_s``) until the ensemble's successes since
    ``before`` include every answer the caller saw."""
    key = ("nv_inference_request_success", contract.ENSEMBLE)
    deadline = time.monotonic() + wait_s
    while True:
        after = scrape(url)
        if after is None or before is None:
            return after
        counted = after.get(key, 0.0) - before.get(key, 0.0)
        if counted >= answered:
            return after
        if time.monotonic() >= deadline:
            logger.warning(
                "%s counts %d successes for %d answers after %.1f s (another caller's, or another Triton's?); "
                "its breakdown may miss some",
                url,
                counted,
                answered,
                wait_s,
            )
            return after
        time.sleep(0.05)


@dataclass(frozen=True)
class ModelBreakdown:
    model: str
    requests: int  # successful requests
    failures: int  # as Triton counts them: 2.51 counts a failed ensemble request at more than one level
    inferences: int
    executions: int
    avg_batch: float
    request_ms: float  # per successful request, queue and compute included
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float


def breakdown(before: Snapshot, after: Snapshot) -> list[ModelBreakdown]:
    """What changed between two scrapes, one row per model in pipeline order."""

    def delta(name: str, model: str) -> float:
        return after.get((name, model), 0.0) - before.get((name, model), 0.0)

    models = {model for _, model in after}
    ordered = [m for m in PIPELINE_ORDER if m in models] + sorted(models - set(PIPELINE_ORDER))
    rows = []
    for model in ordered:
        ok = delta("nv_inference_request_success", model)
        executions = delta("nv_inference_exec_count", model)
        inferences = delta("nv_inference_count", model)

        def per_request_ms(name: str, model: str = model, ok: float = ok) -> float:
            return delta(name, model) / ok / 1000.0 if ok else 0.0

        rows.append(
            ModelBreakdown(
                model=model,
                requests=round(ok),
                failures=round(delta("nv_inference_request_failure", model)),
                inferences=round(inferences),
                executions=round(executions),
                avg_batch=inferences / executions if executions else 0.0,
                request_ms=per_request_ms("nv_inference_request_duration_us"),
                queue_ms=per_request_ms("nv_inference_queue_duration_us"),
                compute_input_ms=per_request_ms("nv_inference_compute_input_duration_us"),
                compute_infer_ms=per_request_ms("nv_inference_compute_infer_duration_us"),
                compute_output_ms=per_request_ms("nv_inference_compute_output_duration_us"),
            )
        )
    return rows
