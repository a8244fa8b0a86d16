"""Admission decisions on a controlled clock: what the gateway takes, refuses, and why."""

from __future__ import annotations

import pytest

from matteserve.errors import Overloaded
from matteserve.gateway.admission import Admission, AdmissionSettings, Lane
from matteserve.gateway.metrics import GatewayMetrics

SMALL, BIG = 1_000_000, 36_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def admission(clock: Clock, **settings: object) -> Admission:
    values = {
        "queue_budget_s": 2.0,
        "big_image_pixels": 8_000_000,
        "big_in_flight": 1,
        "max_in_flight": 64,
        "min_in_flight": 1,
    }
    a = Admission(AdmissionSettings(**(values | settings)), GatewayMetrics())  # type: ignore[arg-type]
    a._now = clock  # type: ignore[method-assign]
    return a


def teach_rate(a: Admission, clock: Clock, per_second: float, lane: Lane = Lane.SMALL) -> None:
    """Ten lone requests, each taking 1/per_second: the lane then drains at that rate."""
    pixels = SMALL if lane is Lane.SMALL else BIG
    for _ in range(10):
        ticket = a.admit(pixels, clock.now + 60)
        clock.now += 1 / per_second
        a.release(ticket, completed=True)


def test_an_idle_gateway_takes_a_request_before_it_has_measured_anything(clock: Clock) -> None:
    a = admission(clock)
    assert a.admit(SMALL, clock.now + 0.001).lane is Lane.SMALL


def test_requests_beyond_the_queue_budget_are_refused_at_once_and_say_why(clock: Clock) -> None:
    a = admission(clock, queue_budget_s=2.0)
    teach_rate(a, clock, per_second=4.0)
    # 4/s and a 2 s budget: the 9th waits for 8, 8/4 = 2 s; the 10th would wait longer.
    taken = [a.admit(SMALL, clock.now + 60) for _ in range(9)]
    with pytest.raises(Overloaded, match="queue budget of 2 s"):
        a.admit(SMALL, clock.now + 60)
    assert [t.ahead for t in taken] == list(range(9))


def test_a_request_that_cannot_finish_before_its_deadline_is_refused(clock: Clock) -> None:
    a = admission(clock, queue_budget_s=10.0)
    teach_rate(a, clock, per_second=4.0)
    for _ in range(3):
        a.admit(SMALL, clock.now + 60)
    with pytest.raises(Overloaded, match="deadline"):
        a.admit(SMALL, clock.now + 0.9)  # 4 ahead of it at 4/s: 1 s
    assert a.admit(SMALL, clock.now + 1.1).ahead == 3


def test_the_estimate_follows_the_drain_rate_seen_under_load(clock: Clock) -> None:
    a = admission(clock)
    teach_rate(a, clock, per_second=2.0)
    # Under load the backends finish 10/s (batching, more instances): four sent at once come back
    # 0.1 s apart.
    for _ in range(20):
        tickets = [a.admit(SMALL, clock.now + 60) for _ in range(4)]
        for t in tickets:
            clock.now += 0.1
            a.release(t, completed=True)
    estimate = a.estimate(Lane.SMALL)
    assert estimate is not None
    assert estimate[1] == pytest.approx(1 / 10, rel=0.05)


def test_a_failed_request_teaches_nothing_and_frees_its_place(clock: Clock) -> None:
    a = admission(clock)
    ticket = a.admit(SMALL, clock.now + 60)
    clock.now += 30
    a.release(ticket, completed=False)
    assert a.in_flight == 0
    assert a.estimate(Lane.SMALL) is None


def test_big_images_have_their_own_lane_with_its_own_slots_and_a_lower_priority(clock: Clock) -> None:
    a = admission(clock, big_in_flight=1)
    big = a.admit(BIG, clock.now + 60)
    assert (big.lane, big.priority) == (Lane.BIG, 2)
    with pytest.raises(Overloaded, match="already being worked on"):
        a.admit(BIG, clock.now + 60)
    small = a.admit(SMALL, clock.now + 60)  # a big image in flight does not hold small ones back
    assert (small.lane, small.priority) == (Lane.SMALL, 1)


def test_a_few_requests_are_always_taken_so_a_slow_start_cannot_shut_the_gateway(clock: Clock) -> None:
    a = admission(clock, min_in_flight=4, queue_budget_s=0.1)
    teach_rate(a, clock, per_second=0.5)  # a cold start: the first requests were slow
    assert [a.admit(SMALL, clock.now + 0.5).ahead for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(Overloaded):
        a.admit(SMALL, clock.now + 60)


def test_while_no_backend_is_ready_requests_are_taken_to_wait_up_to_the_hard_cap(clock: Clock) -> None:
    a = admission(clock, max_in_flight=6, queue_budget_s=1.0)
    teach_rate(a, clock, per_second=1.0)
    assert len([a.admit(SMALL, clock.now + 60, backends_ready=False) for _ in range(6)]) == 6
    with pytest.raises(Overloaded, match="limit of 6"):
        a.admit(SMALL, clock.now + 60, backends_ready=False)


def test_the_hard_in_flight_cap_holds_whatever_the_estimate(clock: Clock) -> None:
    a = admission(clock, max_in_flight=3, queue_budget_s=1000.0)
    teach_rate(a, clock, per_second=1000.0)
    for _ in range(3):
        a.admit(SMALL, clock.now + 60)
    with pytest.raises(Overloaded, match="limit of 3"):
        a.admit(SMALL, clock.now + 60)


def test_refusals_are_counted_not_logged_one_by_one(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a = admission(clock, max_in_flight=1)
    a.admit(SMALL, clock.now + 60)
    for _ in range(500):
        with pytest.raises(Overloaded):
            a.admit(SMALL, clock.now + 60)
    assert a.metrics.shed.labels("small")._value.get() == 500
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) <= 1
