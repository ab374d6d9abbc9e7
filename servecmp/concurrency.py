"""Adaptive concurrency: how many requests servecmp keeps in flight at one endpoint.

`VegasController` is a pure, deterministic state machine: it is fed one `Sample` per finished
request attempt (latency, outcome, completion time, requests in flight) and answers with the limit
to use from now on. It knows nothing of sockets or clocks, so tests drive it with hand-made samples
and assert exact levels. `Gate` is the asyncio side: a counting gate whose limit can change while
requests wait on it (`EndpointClient` owns one per endpoint, fixed or adaptive).

The control law is TCP Vegas (Brakmo & Peterson, 1994), in the form Netflix's concurrency-limits
library uses for request concurrency (`VegasLimit`), with slow start and an AIMD-style reaction to
overload, for these reasons:

* Vegas estimates the requests *queued* at the server from Little's law: with L in flight, a mean
  latency ``rtt`` and the no-load latency ``floor``, the server serves ``L * floor / rtt`` of them
  at the speed of an idle seat and ``queue = L * (1 - floor / rtt)`` wait. Equivalently,
  ``queue = L - throughput * floor``: it is "latency climbing without more throughput", the signal
  the issue asks to back off on. Below the server's ceiling queue ≈ 0 (raise); above it, throughput
  is flat and every extra request only queues (lower). It settles a few requests (alpha..beta) above
  the server's seats: every seat stays busy and latency stays near its floor. A pure AIMD limiter
  never sees the ceiling of a server that queues instead of refusing (vLLM), so it would climb to the
  cap; Netflix's Gradient2 follows a long-term latency average, which drifts upwards under sustained
  queueing and makes it oscillate.
* Latency can also climb from costs outside the server's seats that grow with the rate (client and
  server CPU at hundreds of requests a second), while more in flight still buys throughput. So the
  queue estimate only lowers the limit when this level is not served clearly faster (10%, by Little's
  law: in flight / latency) than every lower level measured: "latency climbs without more
  throughput", literally. At a true ceiling the served rate is flat and Vegas acts as above.
* Slow start (doubling per window) reaches a ceiling of K seats in log2(K) round trips, so a short
  run loses little to the ramp; Vegas' additive steps then hold it.
* Overload (HTTP 429/503, a timeout) halves the limit at once, TCP-style, once per round trip: only
  failures of requests started *after* the last decrease count, since those in flight were sent
  under the old limit. A limit cut from above ``ssthresh`` grows back by doubling up to it.
* The floor is the lowest latency seen, which cannot follow a server that gets slower for good (the
  floor would stay too low and Vegas would shrink the limit to alpha..beta). So when even the fastest
  request of `probe_after` windows in a row implies a queue above beta, the controller probes: one
  window at half the limit, whose fastest latency becomes the new floor (Netflix Vegas resets its
  no-load latency periodically for the same reason; halving makes the probe measure a level with
  little queueing).

Windows: a window holds the successful samples of requests sent since the limit last changed and
closes at half the limit of them (`window_size`: about one round trip), so every decision rests on
the current level's own samples; an overload sample acts at once. Every decision is made at a
window's close, from its samples alone.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import asyncio

#: "ok": an answer (any 2xx, also a 4xx refusal of the item: the server answered at its speed).
#: "overload": the server says it is too busy (429, 503) or did not answer in time.
#: "other": a failure that says nothing about load (refused connection, 500, ...): ignored.
Outcome = Literal["ok", "overload", "other"]

#: The old fixed default; also where "auto" starts before slow start doubles it.
INITIAL_LIMIT = 4
#: The default cap of "auto" (`--max-concurrency`).
DEFAULT_MAX_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Sample:
    latency: float
    outcome: Outcome
    #: When the attempt finished (any monotonic clock; only differences matter).
    time: float
    #: Requests in flight at this endpoint when it finished, itself included.
    in_flight: int


@dataclass(frozen=True)
class Step:
    """One decision, as the run's concurrency.jsonl records it."""

    time: float
    limit: int
    #: "start", "slow-start", "increase", "hold", "decrease", "overload", "probe", "probed".
    reason: str
    rtt: float | None = None
    floor: float | None = None
    queue: float | None = None
    throughput: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}


@dataclass
class _Window:
    target: int
    n: int = 0
    lat_sum: float = 0.0
    lat_min: float = math.inf
    inflight_sum: int = 0
    inflight_max: int = 0


def alpha_beta(limit: int, alpha: float, beta: float) -> tuple[float, float]:
    """The queue band Vegas holds, widened like Netflix's (x log10 L above 10): at large limits a
    few requests of queue is within latency noise."""
    scale = max(1.0, math.log10(limit))
    return alpha * scale, beta * scale


def window_size(limit: int) -> int:
    """Samples a window needs: half the limit (at least one). Only requests sent after the last
    change count, and at a limit L about L/2 of them finish within a round trip of it, so a decision
    follows each change within about one round trip and always rests on the new level's own samples."""
    return max(1, (limit + 1) // 2)


@dataclass
class VegasController:
    """Vegas with slow start, halving on overload and floor probes (see the module docstring)."""

    initial: int = INITIAL_LIMIT
    min_limit: int = 1
    max_limit: int = DEFAULT_MAX_LIMIT
    alpha: float = 3.0
    beta: float = 6.0
    #: Multiplicative decrease on overload.
    backoff: float = 0.5
    #: Suspicious windows in a row (even the fastest request queued beyond beta) before a probe.
    probe_after: int = 3
    #: How much faster than every lower level a level must be served to go on rising past beta.
    gain: float = 0.1

    limit: int = field(init=False)
    slow_start: bool = field(init=False, default=True)
    #: Doubling continues below this level (the level before the last overload's halving).
    ssthresh: int = field(init=False)
    floor: float = field(init=False, default=math.inf)
    history: list[Step] = field(init=False, default_factory=list)
    #: Answers over the time from the first request sent to the last answer: the mean throughput.
    answered: int = field(init=False, default=0)
    first_sent: float = field(init=False, default=math.inf)
    last_answer: float = field(init=False, default=-math.inf)
    _window: _Window | None = field(init=False, default=None)
    #: When the limit last changed: only requests sent since then count in a window.
    _since: float = field(init=False, default=-math.inf)
    _last_decrease: float = field(init=False, default=-math.inf)
    _suspicious: int = field(init=False, default=0)
    #: Answers so far, and their count and the time when the current window opened (throughput).
    _completed: int = field(init=False, default=0)
    _completed_at_open: int = field(init=False, default=0)
    _opened: float = field(init=False, default=-math.inf)
    _probe_saved: int | None = field(init=False, default=None)
    #: The rate each level was last served at (Little: in flight / latency); cleared when the server
    #: changed (a probe, an overload), since old rates no longer describe it.
    _served: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.max_limit = max(self.min_limit, self.max_limit)
        self.limit = min(self.max_limit, max(self.min_limit, self.initial))
        self.ssthresh = self.max_limit
        self.history.append(Step(0.0, self.limit, "start"))

    def cap(self, max_limit: int) -> None:
        """Lower the cap (a server's advertised limit, learnt after the start)."""
        self.max_limit = max(self.min_limit, min(self.max_limit, max_limit))
        self.ssthresh = min(self.ssthresh, self.max_limit)
        self.limit = min(self.limit, self.max_limit)

    def forget(self) -> None:
        """Drop what the samples so far taught (the floor, the open window), keeping the level: the
        probe requests before a run are tiny prompts, far faster than its items."""
        self.floor = math.inf
        self._window = None
        self._suspicious = 0

    def on_sample(self, s: Sample) -> int:
        """Feed one finished attempt; returns the limit to use from now on."""
        if s.outcome == "overload":
            self._overload(s)
        elif s.outcome == "ok":
            self._completed += 1
            self.answered += 1
            self.first_sent = min(self.first_sent, s.time - s.latency)
            self.last_answer = max(self.last_answer, s.time)
            if not math.isfinite(self._opened):
                self._opened = s.time - s.latency
            if s.time - s.latency < self._since:
                return self.limit
            w = self._window
            if w is None:
                w = self._window = _Window(target=window_size(self.limit))
            w.n += 1
            w.lat_sum += s.latency
            w.lat_min = min(w.lat_min, s.latency)
            w.inflight_sum += s.in_flight
            w.inflight_max = max(w.inflight_max, s.in_flight)
            if w.n >= w.target:
                self._close(w, s.time)
        return self.limit

    def _set(self, limit: int, now: float) -> None:
        new = min(self.max_limit, max(self.min_limit, limit))
        if new != self.limit:
            self.limit = new
            self._since = now
            if self._window is not None:
                self._window = None

    def _still_gaining(self, served: float) -> bool:
        """Whether this level is served clearly faster (by `gain`) than every lower level measured:
        latency then climbs from costs outside the server's seats that grow with the rate (client and
        server CPU, the network) and more in flight still buys throughput, so Vegas' queue estimate
        is not a queue. A server at its ceiling serves no faster at a higher level."""
        lower = [x for level, x in self._served.items() if level < self.limit]
        return bool(lower) and served > (1.0 + self.gain) * max(lower)

    def _overload(self, s: Sample) -> None:
        # Requests sent before the last cut were sent under the old limit: their failures are the
        # same congestion, already answered.
        if s.time - s.latency < self._last_decrease:
            return
        if self._probe_saved is not None:  # a probe interrupted by overload: keep the lower level
            self._probe_saved = None
        cut = max(self.min_limit, int(self.limit * self.backoff))
        if self.history[-1].reason != "overload":
            # A storm's first cut says where doubling back stops; its later cuts go below it.
            self.ssthresh = cut
        self._set(cut, s.time)
        self._since = s.time
        self.slow_start = False
        self._last_decrease = s.time
        self._suspicious = 0
        self._window = None
        self._served.clear()
        self.history.append(Step(s.time, self.limit, "overload"))

    def _close(self, w: _Window, now: float) -> None:
        self._window = None
        rtt = w.lat_sum / w.n
        in_flight = w.inflight_sum / w.n
        # Every answer since the last measurement counts here, those of requests sent earlier too,
        # over at least one latency floor (answers come in bursts; a shorter span says nothing).
        span = now - self._opened
        throughput = None
        if span > 0 and span >= min(self.floor, w.lat_min):
            throughput = (self._completed - self._completed_at_open) / span
            self._opened, self._completed_at_open = now, self._completed
        if self._probe_saved is not None:
            # The probe window ran at half the limit: its fastest request is the no-load latency now.
            self.floor = w.lat_min
            self._set(self._probe_saved, now)
            self._probe_saved = None
            self._suspicious = 0
            # What the old floor taught (the last cuts) is void: double again while nothing queues.
            self.slow_start, self.ssthresh = True, self.max_limit
            self._served.clear()
            self.history.append(Step(now, self.limit, "probed", rtt, self.floor, None, throughput))
            return
        self.floor = min(self.floor, w.lat_min)
        queue = in_flight * (1.0 - self.floor / rtt) if rtt > 0 else 0.0
        # Little's law again: the rate this level was served at (not bursty, unlike counting answers).
        served = in_flight / rtt if rtt > 0 else 0.0
        gaining = self._still_gaining(served)
        self._served[self.limit] = served
        alpha, beta = alpha_beta(self.limit, self.alpha, self.beta)
        min_queue = in_flight * (1.0 - self.floor / w.lat_min) if w.lat_min > 0 else 0.0
        # A level served faster than the lower ones explains its latency: nothing to re-measure.
        self._suspicious = self._suspicious + 1 if min_queue > beta and not gaining else 0
        if self._suspicious >= self.probe_after:
            self._probe_saved = self.limit
            self._set(self.limit // 2, now)
            reason = "probe"
        elif queue > beta and not gaining:
            # Little's law: throughput * floor requests keep the seats busy; keep beta more queued.
            self._set(int(self.limit - (queue - beta)), now)
            self.slow_start = False
            self.ssthresh = self.limit
            self._last_decrease = now
            reason = "decrease"
        elif (queue < alpha or queue > beta) and w.inflight_max >= self.limit:
            # Only when the limit was used: a run with fewer items pending than the limit must not
            # talk the limit up (the window's largest in-flight count tells). Past beta only when
            # throughput still grows (`_still_gaining`).
            if self.slow_start or self.limit < self.ssthresh:
                top = self.max_limit if self.slow_start else self.ssthresh
                self._set(min(self.limit * 2, top), now)
                reason = "slow-start"
            else:
                self._set(self.limit + 1, now)
                reason = "increase"
        else:
            reason = "hold"
        self.history.append(Step(now, self.limit, reason, rtt, self.floor, queue, throughput))


class Gate:
    """A counting gate (a semaphore whose size can change), FIFO. Lowering the limit never cancels a
    request in flight; it only holds back the next ones until the count is below the new limit."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        import asyncio

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser counted us in before waking us
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # woken and cancelled at once: give the seat on
            else:
                fut.cancel()
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)


# --- what a vLLM server says about itself (/metrics) ----------------------------------------------

PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"


def parse_metrics(text: str) -> dict[str, float]:
    """The Prometheus text a vLLM server exposes, reduced to what servecmp reads: the prefix-cache
    counters (summed over engines) and ``max_num_seqs`` when some ``*_info`` metric carries it as a
    label (vLLM builds differ in which do; none may)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name, _, value = line.partition(" ")
        else:
            value = rest.rpartition("} ")[2]
        if name in (PREFIX_HITS, PREFIX_QUERIES):
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
        elif 'max_num_seqs="' in line:
            seqs = line.split('max_num_seqs="', 1)[1].split('"', 1)[0]
            if seqs.isdigit():
                out["max_num_seqs"] = float(seqs)
    return out


def prefix_hit_rate(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """The prefix-cache hit rate over a run (token-weighted, from the counters' deltas); None when
    the server exposes no such counters. Other traffic to the same server counts too."""
    if not before or not after or PREFIX_QUERIES not in before or PREFIX_QUERIES not in after:
        return None
    queries = after[PREFIX_QUERIES] - before[PREFIX_QUERIES]
    hits = after.get(PREFIX_HITS, 0.0) - before.get(PREFIX_HITS, 0.0)
    if queries <= 0:
        return None
    return {"hit_rate": hits / queries, "hit_tokens": hits, "query_tokens": queries}


async def fetch_metrics(root: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """`parse_metrics` of the server at `root` (``http://host:port``); None when it has no /metrics
    (not vLLM, or behind a gateway that hides it) or does not answer within `timeout_s`."""
    import aiohttp

    from servecmp._http import env_proxy

    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                    session.get(root.rstrip("/") + "/metrics", proxy=env_proxy(root)) as resp):
            if resp.status != 200:
                return None
            return parse_metrics(await resp.text())
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


def held_level(c: VegasController) -> int | None:
    """The level "auto" spent the most time at, between its first and last step: where it found the
    server's ceiling (plus its few queued requests)."""
    steps = [s for s in c.history if s.reason != "start"]
    if len(steps) < 2:
        return None
    time_at: dict[int, float] = {}
    for a, b in zip(steps, steps[1:], strict=False):
        time_at[a.limit] = time_at.get(a.limit, 0.0) + (b.time - a.time)
    return max(time_at, key=lambda k: time_at[k])


def mean_throughput(c: VegasController) -> float | None:
    span = c.last_answer - c.first_sent
    return c.answered / span if c.answered > 1 and span > 0 else None


def describe_path(c: VegasController) -> str:
    """One line of where "auto" went: the level it ended at, its range, the best throughput seen."""
    levels = [s.limit for s in c.history]
    held = held_level(c)
    mean = mean_throughput(c)
    peak = (f", mostly at {held}" if held is not None else "") + (f", {mean:.1f} req/s on average" if mean else "")
    overloads = sum(1 for s in c.history if s.reason == "overload")
    over = f", {overloads} overload back-off{'s' if overloads != 1 else ''}" if overloads else ""
    floor = f", latency floor {c.floor:.3f} s" if math.isfinite(c.floor) else ""
    return (f"ended at {c.limit} in flight (ranged {min(levels)}-{max(levels)} over {len(levels) - 1} "
            f"step{'s' if len(levels) != 2 else ''}{peak}{floor}{over}; cap {c.max_limit})")


#: A run directory's record of what "auto" did (one line per step, then one summary line per
#: endpoint; a resumed run appends its own, marked by its `segment`).
CONCURRENCY_LOG = "concurrency.jsonl"


class RunWatch:
    """What a run learns about its endpoints' servers around the scoring: their /metrics before and
    after (the prefix-cache hit rate over the run; ``max_num_seqs`` as a cap on "auto" when a server
    advertises it) and each client's concurrency path. Clients are `EndpointClient`s by name."""

    #: Decisions so far are appended to the run's log this often, so a run killed outright (kill -9)
    #: keeps its concurrency path up to then; the summary lines come at the end.
    FLUSH_S = 2.0

    def __init__(self, clients: dict[str, Any], before: dict[str, dict[str, float] | None],
                 run_dir: Any = None) -> None:
        self.clients = clients
        self.before = before
        self.segment = _utcnow()
        self.run_dir = run_dir
        #: Per client, how many of its controller's steps are in the log already.
        self._written = dict.fromkeys(clients, 0)
        self._flusher: Any = None

    @classmethod
    async def start(cls, clients: dict[str, Any], run_dir: Any = None) -> RunWatch:
        """Before the scoring; with ``run_dir``, the log is kept up to date while the run goes on."""
        import asyncio

        before = await _metrics_of(clients)
        for name, client in clients.items():
            if client.controller is not None:
                client.controller.forget()
            seqs = (before.get(name) or {}).get("max_num_seqs")
            if seqs:  # never ask for more in flight than the server runs at once
                client.cap_concurrency(int(seqs))
        watch = cls(clients, before, run_dir)
        if run_dir is not None:
            watch._flusher = asyncio.get_running_loop().create_task(watch._flush_every())
        return watch

    def _append_steps(self, log: Any) -> None:
        for name, client in self.clients.items():
            c: VegasController | None = client.controller
            if c is not None:
                for step in c.history[self._written[name]:]:
                    log.append({"endpoint": name, "segment": self.segment, **step.as_dict()})
                self._written[name] = len(c.history)

    def _log(self, run_dir: Any) -> Any:
        from pathlib import Path

        from servecmp.runstore import JsonlAppender

        return JsonlAppender(Path(run_dir) / CONCURRENCY_LOG)

    async def _flush_every(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.FLUSH_S)
            if any(c.controller is not None and len(c.controller.history) > self._written[n]
                   for n, c in self.clients.items()):
                with self._log(self.run_dir) as log:
                    self._append_steps(log)

    def stop(self) -> None:
        """Stop the periodic appends (an interrupted run: what was appended stays)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None

    async def finish(self, run_dir: Any) -> list[str]:
        """Append the rest of the concurrency log to `run_dir` and return the lines to print."""
        self.stop()
        after = await _metrics_of(self.clients)
        lines: list[str] = []
        with self._log(run_dir) as log:
            self._append_steps(log)
            for name, client in self.clients.items():
                c: VegasController | None = client.controller
                cache = prefix_hit_rate(self.before.get(name), after.get(name))
                summary: dict[str, Any] = {"endpoint": name, "segment": self.segment, "summary": True,
                                           "setting": client.spec.max_concurrency,
                                           "final": client.in_flight_limit}
                if c is not None:
                    summary.update(mostly_at=held_level(c), mean_throughput=round(mean_throughput(c) or 0.0, 3),
                                   floor=round(c.floor, 6) if math.isfinite(c.floor) else None, cap=c.max_limit)
                    lines.append(f"concurrency {name}: auto {describe_path(c)}")
                if cache is not None:
                    summary["prefix_cache"] = {k: round(v, 4) for k, v in cache.items()}
                    lines.append(f"prefix cache {name}: {cache['hit_rate']:.1%} of prompt tokens hit over the run "
                                 f"(server /metrics; other traffic to it counts too)")
                log.append(summary)
        return lines


def _utcnow() -> str:
    from servecmp.runstore import utcnow

    return utcnow()


async def _metrics_of(clients: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    import asyncio

    names = list(clients)
    # A spec's base_url is normalised to end in /v1 (EndpointSpec validates it); /metrics sits at the
    # server root. Not servecmp.endpoints.root_url: endpoints imports this module (no cycle).
    found = await asyncio.gather(*(fetch_metrics(clients[n].spec.base_url[: -len("/v1")]) for n in names))
    return dict(zip(names, found, strict=True))


T = TypeVar("T")


async def gather_or_cancel(tasks: Sequence[asyncio.Future[T]]) -> list[T]:
    """The results of all `tasks`; if one fails (or the wait is cancelled), the others are
    cancelled and awaited before the exception propagates, so none is left running."""
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
