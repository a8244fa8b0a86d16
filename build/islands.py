"""FP32 islands in a BF16 model: which runs of graph nodes to keep in FP32 so the BF16 model passes
the parity gate (:mod:`.runtime_choice`), found with as few gate runs as possible.

The search only sees a ``trial`` function (node ranges -> gate report), so it is tested without a
model; :mod:`matteserve.segments` serves the result.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from matteserve.segments import NodeRange

if TYPE_CHECKING:
    from matteserve.build.runtime_choice import GateReport

logger = logging.getLogger(__name__)

# Where BF16 everywhere fails the gate, the graph is cut into this many runs of nodes; each run's own
# BF16 damage is measured, and the worst are kept in FP32 one by one until the gate passes.
SENSITIVITY_CHUNKS = 8
PROBE_PHOTOS = 3
SHRINK_DEPTH = 3


def merge(ranges: Sequence[NodeRange]) -> tuple[NodeRange, ...]:
    """Sorted ranges with touching ones joined: fewer pieces, fewer copies between them."""
    out: list[NodeRange] = []
    for start, end in sorted(ranges):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


def fp32_islands(
    node_count: int,
    trial: Callable[[tuple[NodeRange, ...]], GateReport],
    probe: Callable[[tuple[NodeRange, ...]], GateReport] | None = None,
    chunks: int = SENSITIVITY_CHUNKS,
) -> GateReport | None:
    """The gate report of the smallest set of FP32 node ranges this search finds that lets a BF16
    model pass, or None. ``trial(fp32_ranges)`` gates the model with those ranges in FP32; ``probe``
    (default: ``trial``) does the same more cheaply, to rank the chunks.

    Each chunk's damage is probed with only that chunk in BF16; then the most damaging chunks go to
    FP32 one at a time until the gate passes (at most ``chunks`` probes and ``chunks`` trials); then
    each FP32 range is halved while one half alone still passes (:func:`shrink`)."""
    probe = probe or trial
    bounds = [round(i * node_count / chunks) for i in range(chunks + 1)]
    pieces = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    alone = {p: probe(merge([q for q in pieces if q != p])).excess for p in pieces}
    kept: list[NodeRange] = []
    for piece in sorted(pieces, key=lambda p: -alone[p]):
        kept.append(piece)
        if len(kept) == len(pieces):
            return None  # all FP32 is not BF16 any more
        report = trial(merge(kept))
        logger.info("%s", report.line())
        if report.passed:
            return shrink(report, trial)
    return None


def shrink(
    report: GateReport, trial: Callable[[tuple[NodeRange, ...]], GateReport], depth: int = SHRINK_DEPTH
) -> GateReport:
    """Halve each FP32 range of a passing ``report`` while one half still passes, ``depth`` times at
    most: every node back in BF16 is speed, and a smaller island carries fewer of the U-Net's wide
    skip tensors across its edges."""
    ranges = list(report.fp32_nodes)
    for i in range(len(ranges)):
        for _ in range(depth):
            start, end = ranges[i]
            middle = (start + end) // 2
            for half in ((start, middle), (middle, end)):
                if half[1] <= half[0]:
                    continue
                attempt = trial(merge([*ranges[:i], half, *ranges[i + 1 :]]))
                logger.info("%s", attempt.line())
                if attempt.passed:
                    ranges[i], report = half, attempt
                    break
            else:
                break
    return report
