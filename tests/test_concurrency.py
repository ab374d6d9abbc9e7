"""The adaptive concurrency controller (servecmp.concurrency) as a pure state machine, driven with
hand-made samples of a queue-model server (K seats, a fixed service time s: a request's latency is
s * max(1, L / K) at L in flight), and asserted against levels worked out by hand; then its gate, the
/metrics parsing, and the `--concurrency` option.

Worked numbers used below (alpha = 3, beta = 6, both x log10 L above L = 10):
  L=64: alpha 5.419, beta 10.837      L=42: beta 9.740        L=41: alpha 4.838, beta 9.677
  L=40: alpha 4.806, beta 9.612       L=25: beta 8.388        L=20: beta 7.806
"""

from __future__ import annotations

import asyncio
import math

import pytest

from servecmp.concurrency import (
    Gate,
    Sample,
    VegasController,
    alpha_beta,
    describe_path,
    held_level,
    parse_metrics,
    prefix_hit_rate,
    window_size,
)


class Feeder:
    """Feeds a controller whole windows of samples, each request sent after the last change."""

    def __init__(self, c: VegasController) -> None:
        self.c = c
        self.t = 10.0
        self.path = [c.limit]

    def level(self, latency: float, in_flight: int | None = None) -> int:
        """One window at the current limit, every request taking `latency`; returns the new limit."""
        start = self.t
        n = window_size(self.c.limit)
        flight = in_flight if in_flight is not None else self.c.limit
        for i in range(n):
            self.c.on_sample(Sample(latency, "ok", start + latency + i * 1e-6, flight))
        self.t = start + latency + n * 1e-6 + 1e-3
        self.path.append(self.c.limit)
        return self.c.limit

    def queue_model(self, seats: int, service: float) -> int:
        lim = self.c.limit
        return self.level(service * max(1.0, lim / seats))

    def overload(self, *, started: float | None = None) -> int:
        """A 429 for a request sent at `started` (default: just now, after every change)."""
        latency = 0.01
        begin = self.t if started is None else started
        self.t = max(self.t, begin) + latency
        self.c.on_sample(Sample(self.t - begin, "overload", self.t, self.c.limit))
        self.t += 1e-3
        self.path.append(self.c.limit)
        return self.c.limit


def test_alpha_beta_widen_above_ten() -> None:
    assert alpha_beta(4, 3, 6) == (3, 6)
    a, b = alpha_beta(64, 3, 6)
    assert (round(a, 3), round(b, 3)) == (5.419, 10.837)


def test_small_server_settles_a_few_requests_above_its_seats() -> None:
    # K=4, s=1: at 4 in flight no queue (double); at 8 each waits one service: queue = 8*(1-1/2) = 4,
    # inside [3, 6]: hold.
    f = Feeder(VegasController())
    for _ in range(3):
        f.queue_model(4, 1.0)
    assert f.path == [4, 8, 8, 8]
    assert f.c.floor == 1.0


def test_saturating_server_at_32_seats() -> None:
    # 4 -> 8 -> 16 -> 32 without queueing (slow start). At 64: latency 0.5, queue 32 > 10.837:
    # 64 - (32 - 10.837) = 42.8 -> 42. At 42: latency 0.328125, queue 10.0 > 9.740 -> 41. At 41:
    # queue 9.0 in [4.838, 9.677]: hold there, 9 requests queued, all 32 seats busy.
    f = Feeder(VegasController())
    for _ in range(8):
        f.queue_model(32, 0.25)
    assert f.path == [4, 8, 16, 32, 64, 42, 41, 41, 41]
    assert f.c.history[-1].reason == "hold"
    assert not f.c.slow_start
    # What a run prints and records: where it settled (the most time), the range, the floor.
    assert held_level(f.c) == 41
    line = describe_path(f.c)
    assert line.startswith("ended at 41 in flight (ranged 4-64 over 8 steps, mostly at 41") and "floor 0.250 s" in line


def test_latency_that_climbs_while_throughput_grows_is_not_a_queue() -> None:
    # No seat limit, but a cost per request that grows with the rate (client and server CPU):
    # latency 0.25 + 0.001 L. At 64: latency 0.314, Vegas' queue 64 * (1 - 0.254/0.314) = 12.2 > 10.837,
    # but served 64/0.314 = 204 > 1.1 * (32/0.282 = 113.5): still gaining, so it doubles on; the same at
    # 128 (335 > 1.1 * 204) and at the cap 256 (506 > 1.1 * 335).
    f = Feeder(VegasController())
    for _ in range(7):
        f.level(0.25 + 0.001 * f.c.limit)
    assert f.path == [4, 8, 16, 32, 64, 128, 256, 256]
    # At a real ceiling the same rule does not fire (test_saturating_server_at_32_seats: 64 -> 42).


def test_a_429_storm_halves_once_per_round_trip_then_recovers() -> None:
    f = Feeder(VegasController())
    for _ in range(7):
        f.queue_model(32, 0.25)
    assert f.c.limit == 41
    before_cut = f.t - 0.5  # a request sent before the first cut
    assert f.overload() == 20  # halved; ssthresh 20
    assert f.overload(started=before_cut) == 20  # sent under the old limit: the same congestion
    assert [f.overload() for _ in range(5)] == [10, 5, 2, 1, 1]
    assert f.c.ssthresh == 20  # the storm's first cut decides where doubling stops
    # The storm is over: doubling back to 20, then one more per window while nothing queues.
    for _ in range(6):
        f.queue_model(32, 0.25)
    assert f.path[-6:] == [2, 4, 8, 16, 20, 21]
    assert f.c.history[-1].reason == "increase"


def test_a_slowdown_mid_run_is_probed_and_followed() -> None:
    # Steady at 41 (K=32, s=0.25); the server slows to s=0.5.
    # 41: latency 0.640625, queue 25.0 > 9.677 -> int(41 - 15.32) = 25 (suspicious 1)
    # 25: latency 0.5, queue 12.5 > 8.388 -> int(20.89) = 20 (suspicious 2)
    # 20: queue 10 > 7.806 and even the fastest request queued: third time -> probe at 10
    # 10: the probe window's fastest request (0.5) is the new floor; back to 20, slow start allowed
    # 20: no queue -> 40; 40: latency 0.625, queue 8.0 in [4.806, 9.612]: hold.
    f = Feeder(VegasController())
    for _ in range(7):
        f.queue_model(32, 0.25)
    for _ in range(7):
        f.queue_model(32, 0.5)
    assert f.path[7:] == [41, 25, 20, 10, 20, 40, 40, 40]
    assert [s.reason for s in f.c.history[-7:]] == ["decrease", "decrease", "probe", "probed", "slow-start",
                                                    "hold", "hold"]
    assert f.c.floor == 0.5


def test_a_server_that_gets_faster_lowers_the_floor_at_once() -> None:
    f = Feeder(VegasController())
    f.level(1.0)
    f.level(0.5)
    assert f.c.floor == 0.5


def test_requests_sent_before_a_change_do_not_count() -> None:
    c = VegasController()
    c.on_sample(Sample(1.0, "ok", 2.0, 4))
    c.on_sample(Sample(1.0, "ok", 2.1, 4))
    assert c.limit == 8  # changed at t=2.1
    for i in range(10):  # sent at 1.5, before the change: ignored however many
        c.on_sample(Sample(1.0, "ok", 2.5 + i * 0.01, 8))
    assert c.limit == 8 and c.history[-1].reason == "slow-start"


def test_an_idle_limit_is_not_raised() -> None:
    # Fewer requests pending than the limit (in flight stays at 2 of 4): no evidence for more.
    f = Feeder(VegasController())
    f.level(0.25, in_flight=2)
    assert f.path == [4, 4]
    assert f.c.history[-1].reason == "hold"


def test_other_failures_are_ignored_and_caps_hold() -> None:
    c = VegasController(max_limit=6)
    c.on_sample(Sample(0.001, "other", 1.0, 4))
    assert c.floor == math.inf and c.limit == 4
    f = Feeder(c)
    f.level(0.25)
    assert c.limit == 6  # doubling stops at the cap
    c.cap(3)  # a server advertising max_num_seqs=3
    assert c.limit == 3 and c.max_limit == 3


def test_forget_drops_the_floor_of_probe_requests() -> None:
    f = Feeder(VegasController())
    f.level(0.005)  # the tiny "Hello" probe before the run
    f.c.forget()
    assert f.c.floor == math.inf


def test_history_rows_are_json_ready() -> None:
    f = Feeder(VegasController())
    f.queue_model(4, 1.0)
    row = f.c.history[-1].as_dict()
    assert row["limit"] == 8 and row["reason"] == "slow-start" and row["floor"] == 1.0


# --- the gate -----------------------------------------------------------------------------------


def test_gate_caps_in_flight_and_follows_its_limit() -> None:
    async def go() -> list[int]:
        gate = Gate(2)
        peak: list[int] = []

        async def one() -> None:
            await gate.acquire()
            peak.append(gate.in_flight)
            await asyncio.sleep(0.01)
            gate.release()

        await asyncio.gather(*(one() for _ in range(6)))
        assert max(peak) == 2
        peak.clear()
        gate.set_limit(5)
        await asyncio.gather(*(one() for _ in range(10)))
        assert max(peak) == 5
        gate.set_limit(1)
        peak.clear()
        await asyncio.gather(*(one() for _ in range(3)))
        return peak

    assert max(asyncio.run(go())) == 1


def test_gate_is_fifo_and_a_cancelled_waiter_leaves_no_seat_behind() -> None:
    async def go() -> None:
        gate = Gate(1)
        await gate.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await gate.acquire()
            order.append(i)
            gate.release()

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        gate.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == [0, 2]
        assert gate.in_flight == 0

    asyncio.run(go())


# --- what a server says about itself ------------------------------------------------------------

METRICS = """# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 48790.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 25600.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.79e+09
vllm:scheduler_config_info{engine="0",max_num_seqs="64"} 1.0
"""


def test_metrics_are_read_like_vllms() -> None:
    m = parse_metrics(METRICS)
    assert m == {"vllm:prefix_cache_queries_total": 48790.0, "vllm:prefix_cache_hits_total": 25600.0,
                 "max_num_seqs": 64.0}
    later = dict(m, **{"vllm:prefix_cache_queries_total": 58790.0, "vllm:prefix_cache_hits_total": 33600.0})
    assert prefix_hit_rate(m, later) == {"hit_rate": 0.8, "hit_tokens": 8000.0, "query_tokens": 10000.0}
    assert prefix_hit_rate(None, later) is None
    assert prefix_hit_rate(m, m) is None


# --- the option ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "value"), [("auto", "auto"), ("AUTO", "auto"), ("8", 8)])
def test_concurrency_option_accepts_auto_or_a_number(given: str, value: object) -> None:
    from servecmp._cli.common import parse_concurrency

    assert parse_concurrency(given) == value


@pytest.mark.parametrize("bad", ["0", "-2", "many", "2.5", ""])
def test_bad_concurrency_is_one_line(bad: str) -> None:
    from tests.test_mcq_cli import assert_one_line_error, servecmp

    proc = servecmp("mcq", "--baseline", "http://127.0.0.1:9", "--candidate", "http://127.0.0.1:9",
                    "--concurrency", bad)
    assert_one_line_error(proc, "--concurrency")
    assert "neither auto nor a whole number" in proc.stderr
