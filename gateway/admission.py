"""Admission: take a request only if the backends can finish it in time, and say no at once otherwise.

Requests fall into two lanes by size. Each lane learns how many requests per second the backends
finish in it, from its own completions: a request admitted with ``n`` others of its lane ahead that
took ``t`` seconds shows a drain rate of ``(n + 1) / t`` (a moving average of those is the estimate).
A new request is refused with RESOURCE_EXHAUSTED, before any work, when

- its estimated wait (the requests ahead of it over the drain rate) exceeds the queue budget, or
- its estimated finish (one more) falls after the caller's deadline, or
- its lane is full (the big lane takes a few at a time, so big images never hold every worker).

Below ``min_in_flight`` (small lane) requests are taken whatever the estimate: that many keep the
backends busy, and an estimate made while they were not busy says little about what they can do.
An idle big lane likewise always takes one, so the estimate can never lock a lane shut. Big images also
go to Triton at a lower priority, so a small image overtakes every queued big one; together with the
big lane's slots this bounds what a stream of huge images can cost a small one.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from matteserve.errors import Overloaded
from matteserve.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

# Weight of the newest completion in the drain-rate average: a few seconds of traffic move it.
RATE_SMOOTHING = 0.2
# How often the summary of refused requests may be logged: a refusal costs a counter, not a log line.
SHED_LOG_INTERVAL_S = 10.0


class Lane(str, enum.Enum):
    SMALL = "small"  # interactive: Triton priority 1
    BIG = "big"  # images of at least --big-image-pixels: Triton priority 2

    @property
    def priority(self) -> int:
        return 1 if self is Lane.SMALL else 2


@dataclass(frozen=True)
class AdmissionSettings:
    queue_budget_s: float
    big_image_pixels: int
    big_in_flight: int
    max_in_flight: int
    min_in_flight: int = 4


@dataclass
class _LaneState:
    in_flight: int = 0
    rate: float | None = None  # requests/s the backends finish in this lane; None until measured


@dataclass
class Ticket:
    """One admitted request; :meth:`Admission.release` must be called exactly once."""

    lane: Lane
    ahead: int
    admitted_at: float

    @property
    def priority(self) -> int:
        return self.lane.priority


@dataclass
class Admission:
    settings: AdmissionSettings
    metrics: GatewayMetrics
    _lanes: dict[Lane, _LaneState] = field(init=False)
    _shed: int = field(init=False, default=0)
    _shed_logged_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._lanes = {lane: _LaneState() for lane in Lane}

    def _now(self) -> float:
        return time.monotonic()

    @property
    def in_flight(self) -> int:
        return sum(state.in_flight for state in self._lanes.values())

    def lane_of(self, pixels: int) -> Lane:
        return Lane.BIG if pixels >= self.settings.big_image_pixels else Lane.SMALL

    def estimate(self, lane: Lane) -> tuple[float, float] | None:
        """(wait, finish) in seconds for a request admitted to ``lane`` now; None while unmeasured."""
        state = self._lanes[lane]
        if state.rate is None:
            return None
        return state.in_flight / state.rate, (state.in_flight + 1) / state.rate

    def admit(self, pixels: int, deadline: float, backends_ready: bool = True) -> Ticket:
        """A ticket for the request, or :class:`Overloaded` at once, saying why. While no backend is
        ready (a Triton restart) only the hard limits apply: the request will wait for one to come
        back, and a drain rate measured before says nothing about when that is."""
        lane = self.lane_of(pixels)
        state = self._lanes[lane]
        now = self._now()
        reason = self._refusal(lane, state, deadline - now, backends_ready)
        if reason is not None:
            self._refuse(lane, reason)
        state.in_flight += 1
        return Ticket(lane, state.in_flight - 1, now)

    def _refusal(self, lane: Lane, state: _LaneState, remaining: float, backends_ready: bool) -> str | None:
        s = self.settings
        if self.in_flight >= s.max_in_flight:
            return f"the gateway is at its limit of {s.max_in_flight} requests in flight"
        if lane is Lane.BIG and state.in_flight >= s.big_in_flight:
            return f"{s.big_in_flight} image(s) of {s.big_image_pixels / 1e6:g} MP or more are already being worked on"
        floor = s.min_in_flight if lane is Lane.SMALL else 1
        estimate = self.estimate(lane)
        if state.in_flight < floor or estimate is None or not backends_ready:
            return None
        wait, finish = estimate
        if wait > s.queue_budget_s:
            return f"the estimated wait of {wait:.1f} s exceeds the queue budget of {s.queue_budget_s:g} s"
        if finish > remaining:
            return f"the estimated {finish:.1f} s to finish exceeds the {max(remaining, 0):.1f} s left to the deadline"
        return None

    def _refuse(self, lane: Lane, reason: str) -> None:
        self.metrics.shed.labels(lane.value).inc()
        self._shed += 1
        now = self._now()
        if now - self._shed_logged_at >= SHED_LOG_INTERVAL_S:
            logger.warning("overloaded: refused %d request(s) since the last report; latest: %s", self._shed, reason)
            self._shed, self._shed_logged_at = 0, now
        raise Overloaded(f"overloaded: {reason}; retry later")

    def release(self, ticket: Ticket, completed: bool) -> None:
        """Free the ticket's place. ``completed``: the backends finished it, so its latency measures
        how fast they drain this lane (a failed or cancelled request measures nothing)."""
        state = self._lanes[ticket.lane]
        state.in_flight -= 1
        if not completed:
            return
        took = max(self._now() - ticket.admitted_at, 1e-3)
        sample = (ticket.ahead + 1) / took
        state.rate = sample if state.rate is None else state.rate + RATE_SMOOTHING * (sample - state.rate)
        self.metrics.drain_rate.labels(ticket.lane.value).set(state.rate)
