"""Run an MCQ comparison: items × {baseline, every candidate, secondary} → records appended to the
run directory.

`run_mcq` is the whole run (load the task, check every endpoint, write the manifest, score every
pending item, summarise); `servecmp mcq` and `servecmp demo` call it with `McqSettings` from
`servecmp.mcq.settings`. Each endpoint gets its own pool of workers, so a slow endpoint never holds
the others back, and finished records reach the file in batches of whole lines, at most 0.1 s apart
while answers arrive and at the end (a killed run re-asks the few not yet written, never records one
twice). The baseline is scored once
per item whatever the number of candidates. How many requests each endpoint has in flight is its
client's business: a fixed number, or "auto" (`servecmp.concurrency`: found while running, its path
written to concurrency.jsonl and printed at the end with the server's prefix-cache hit rate). A
worker takes a seat first and then the next item from a `servecmp.mcq.order.PrefixScheduler`, so
items sharing a few-shot prefix go out together, the first alone, and the server's prefix cache
computes the prefix once. Records are keyed by
(item, endpoint name, repeat); a resumed run skips every key that already has a record.

Noise floor (`--noise-floor N`): after the main pass, a seeded sample of N items (`floor_items`) is
asked again of the baseline and every candidate, in a shuffled order and at another concurrency
(`floor_concurrency`), recorded with ``repeat = 1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from servecmp.capabilities import ApiChoice, capability_lines, check_resumed_apis, probe_findings
from servecmp.concurrency import DEFAULT_MAX_LIMIT, RunWatch
from servecmp.endpoints import EndpointClient, EndpointError, EndpointSpec
from servecmp.errors import RunFailed, RunInterrupted, UserError
from servecmp.mcq.asking import RunOutcome, make_progress, run_items
from servecmp.mcq.chat import probe_item
from servecmp.mcq.compare import McqComparison, compare_run
from servecmp.mcq.records import ITEM_ERRORS, ITEMS, RECORDS, McqItem
from servecmp.mcq.settings import McqManifest, McqSettings, new_manifest, read_manifest, write_manifest
from servecmp.mcq.summary import McqSummary
from servecmp.runstore import new_run_dir, utcnow, write_jsonl_atomic
from servecmp.tasks.registry import JSONL_PREFIX, TaskData, load_task

__all__ = ["ITEM_ERRORS", "RECORDS", "McqResult", "RunOutcome", "make_progress", "prepare_clients", "run_items",
           "run_mcq"]


@dataclass(frozen=True)
class McqResult:
    run_dir: Path
    #: None for a baseline profile (--baseline-only): there is nothing to compare.
    comparison: McqComparison | None

    @property
    def summary(self) -> McqSummary:
        """The first candidate's summary (the only one of a two-endpoint run)."""
        assert self.comparison is not None
        return self.comparison.candidates[0].summary


#: Seeds the noise-floor sample apart from --sample's (same --seed, another stream).
FLOOR_SEED_OFFSET = 7919


def floor_items(items: Sequence[McqItem], n: int, seed: int) -> list[McqItem]:
    """The noise-floor sample: N items drawn with the run's seed, in a shuffled order."""
    import random

    rng = random.Random(seed + FLOOR_SEED_OFFSET)
    return rng.sample(list(items), min(n, len(items)))


def load_settings_task(settings: McqSettings) -> TaskData:
    return load_task(settings.task, data_dir=settings.data_dir, limit=settings.limit, sample=settings.sample,
                     seed=settings.seed, source=settings.source, fewshot=settings.fewshot,
                     fewshot_file=settings.fewshot_file)


def run_dir_label(task: str) -> str:
    """The task part of a run directory's name: jsonl:/data/my set.jsonl → jsonl-my_set."""
    if task.startswith(JSONL_PREFIX):
        task = "jsonl-" + Path(task.removeprefix(JSONL_PREFIX)).stem
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)


def describe_endpoint(role: str, spec: EndpointSpec) -> str:
    """One line of what servecmp sends an endpoint: where, which model, and the pacing."""
    rps = "unlimited" if spec.requests_per_second is None else f"{spec.requests_per_second:g}"
    level = (f"auto, at most {spec.concurrency_cap or DEFAULT_MAX_LIMIT}" if spec.max_concurrency == "auto"
             else spec.max_concurrency)
    key = f", key from ${spec.api_key_env}" if spec.api_key_env else ""
    return (f"{role:>9}: {spec.model} at {spec.base_url} (concurrency {level}, rps {rps}, "
            f"timeout {spec.timeout_s:g} s, retries {spec.max_retries}{key})")


def run_mcq(settings: McqSettings, console: Console, *, resume: tuple[Path, McqManifest] | None = None) -> McqResult:
    """Run (or, with `resume`, finish) a comparison and return its directory and summary.

    RunInterrupted on Ctrl-C and RunFailed when an endpoint dies: both after every finished record
    is on disk, with the command that resumes the run in the message.
    """
    # The model names resolved below are filled into this copy, not into the caller's settings.
    settings = settings.model_copy(deep=True)
    data = load_settings_task(settings)
    letter = any(it.kind == "letter" for it in data.items)
    if resume is not None and resume[1].task_fingerprint != data.fingerprint:
        raise UserError(
            f"{resume[0]} was made from different items or prompts than task '{settings.task}' gives now "
            "(data or prompt format changed); start a new run"
        )
    run_dir: Path | None = resume[0] if resume is not None else None
    stored = None
    if settings.baseline_run is not None:
        from servecmp.mcq import stored as st

        stored = st.read_stored(settings.baseline_run)
        if resume is None:
            st.check_compatible(settings.baseline_run, stored[0], data, top_k=settings.top_k, api=settings.api)
        # Every candidate is asked through the API the stored baseline was (choose_api refuses otherwise).
        settings.api = st.stored_api(stored[0])  # type: ignore[assignment]
    # With a stored baseline the live one (if any) is asked only the drift check, and only in a new run.
    ask_live = stored is None or (settings.live_baseline and resume is None)

    async def go() -> tuple[Path, RunOutcome]:
        nonlocal run_dir
        specs = {"baseline": settings.baseline, **{f"#{i}": c for i, c in enumerate(settings.candidates)}}
        if not ask_live:
            del specs["baseline"]
        if settings.secondary is not None:
            specs["secondary"] = settings.secondary
        clients = {key: EndpointClient(spec) for key, spec in specs.items()}
        spent: dict[str, EndpointClient] = {}  # by endpoint name, once named: what the run's cost counts
        try:
            models = await prepare_clients(clients, settings.top_k, letter, api=settings.api,
                                           probe=probe_item(data.items))
            for key, spec in specs.items():
                spec.model = models[key]
            settings.resolve_names()
            named = {n: e for n, e in settings.named_endpoints().items() if n != "baseline" or ask_live}
            clients = {name: clients[key] for name, key in zip(named, specs, strict=True)}
            spent.update(clients)
            found = probe_findings(clients)
            stored_info = None
            check_lines: list[dict[str, object]] = []
            if stored is not None:
                from servecmp.mcq import stored as st

                found = st.with_stored_findings(found, stored[0])
                if resume is None:
                    stored_info, check_lines = await st.stored_info(settings, stored, data.items, clients, console,
                                                                      run_items)
                # The main pass never asks a live baseline: the stored records are its answers.
                clients = {n: c for n, c in clients.items() if n != "baseline"}
            if resume is not None:
                check_resumed_apis(resume[1], clients)
            if resume is None:
                run_dir = new_run_dir(settings.runs_dir, f"mcq-{run_dir_label(settings.task)}")
                write_manifest(run_dir, new_manifest(settings, data).model_copy(
                    update={**found, "stored_baseline": stored_info}))
                if stored_info is not None:
                    st.write_check(run_dir, check_lines)
            elif not resume[1].pacing_recorded:
                # A version-1 manifest: rewrite it in today's layout, now recording the pacing in use.
                upgraded = new_manifest(settings, data).model_copy(
                    update={"started_at": resume[1].started_at, "servecmp_version": resume[1].servecmp_version})
                write_manifest(resume[0], upgraded)
            assert run_dir is not None
            if not (run_dir / ITEMS).exists():  # a run from before items.jsonl gets it on resume
                write_jsonl_atomic(run_dir / ITEMS, data.items)
            console.print(f"run directory: {run_dir}  ({len(data.items)} items, {escape(data.source)})",
                          highlight=False)
            if stored is not None:
                from servecmp.mcq import stored as st

                joined = st.join_records(stored[1], data.items, run_dir)
                console.print(escape(st.stored_line(settings.baseline_run, stored[0], joined)), highlight=False)
            for name, spec in named.items():
                console.print(describe_endpoint(name, spec), highlight=False)
            for line in capability_lines(clients):
                console.print(escape(line), highlight=False)
            watch = await RunWatch.start(clients, run_dir)
            with make_progress(console) as progress:
                try:
                    if settings.until_decided is not None:
                        from servecmp.mcq.sequential import run_until_decided

                        outcome = await run_until_decided(data.items, clients, run_dir, plan=settings.until_decided,
                                                          seed=settings.seed, top_k=settings.top_k, progress=None,
                                                          console=console, ask_baseline=stored is None)
                    else:
                        outcome = await run_items(data.items, clients, run_dir, top_k=settings.top_k,
                                                  progress=progress)
                    if settings.noise_floor and not outcome.failed:
                        sample = floor_items(data.items, settings.noise_floor, settings.seed)
                        again = {name: c for name, c in clients.items() if name != "secondary"}
                        console.print(f"noise floor: asking {len(sample)} items again of "
                                      f"{', '.join(again)} (shuffled, other concurrency)", highlight=False)
                        floor = await run_items(sample, again, run_dir, top_k=settings.top_k, progress=progress,
                                                repeat=1)
                        outcome.done += floor.done
                        outcome.failed.update(floor.failed)
                        for k, v in floor.item_errors.items():
                            outcome.item_errors[k] = outcome.item_errors.get(k, 0) + v
                except asyncio.CancelledError:
                    watch.stop()
                    raise KeyboardInterrupt from None
            # Where "auto" found each server's ceiling, and the prefix cache's hit rate over the run.
            for line in await watch.finish(run_dir):
                console.print(escape(line), highlight=False)
            return run_dir, outcome
        finally:
            if run_dir is not None:
                from servecmp.mcq.cost import append_cost

                append_cost(run_dir, spent)  # on Ctrl-C and failures too: those requests were spent
            for c in clients.values():
                await c.aclose()

    try:
        done_dir, outcome = asyncio.run(go())
    except KeyboardInterrupt:
        if run_dir is None:
            raise RunInterrupted("interrupted before any item was sent; nothing to resume") from None
        raise RunInterrupted(f"interrupted; finished items are saved in {run_dir}; resume with: "
                             f"servecmp mcq --resume {run_dir}") from None
    if outcome.failed:
        raise RunFailed(failure_message(outcome, done_dir))
    manifest = read_manifest(done_dir)
    write_manifest(done_dir, manifest.model_copy(update={"finished_at": utcnow()}))
    if settings.baseline_only:
        return McqResult(done_dir, None)
    return McqResult(done_dir, compare_run(done_dir))


def _label(key: str, n_candidates: int) -> str:
    """How messages name an endpoint of `prepare_clients`: "#i" keys are candidates by position."""
    if not key.startswith("#"):
        return key
    return "candidate" if n_candidates == 1 else f"candidate {int(key[1:]) + 1}"


async def prepare_clients(clients: dict[str, EndpointClient], top_k: int, letter: bool, *,
                          api: ApiChoice | None = None, probe: tuple[str, Sequence[str]] | None = None,
                          ) -> dict[str, str]:
    """Resolve model names and prove each endpoint serves logprobs, before any item is sent.
    Returns each endpoint's model name, by the keys of `clients`.

    With `api` (a run), each endpoint's capabilities are probed (servecmp.capabilities) on `probe`
    (a letter prompt and its option tokens), kept in ``client.capabilities``, and the API each one
    is asked through is set in ``client.api``; the echo fallback is kept only where the probe showed
    echo agreeing with the top-k. Without it, one top-k request per endpoint (scripts/bench_mcq.py)."""
    n = sum(1 for key in clients if key.startswith("#"))
    models = {key: await client.resolve_model(_label(key, n)) for key, client in clients.items()}
    if api is None:
        for key, client in clients.items():
            await client.probe_logprobs(_label(key, n), top_k if letter else 1)
        return models
    from servecmp.capabilities import PROBE_CONTINUATIONS, PROBE_PROMPT, choose_api, probe_capabilities

    prompt, options = probe or (PROBE_PROMPT, PROBE_CONTINUATIONS)
    caps = {}
    for key, client in clients.items():
        try:
            caps[key] = await probe_capabilities(client, top_k if letter else 1, prompt=prompt, continuations=options)
        except EndpointError as exc:
            raise UserError(f"{_label(key, n)} endpoint failed the capability probe: {exc}") from exc
        client.capabilities = caps[key]
    chosen = choose_api(caps, api, letter=letter, labels={key: _label(key, n) for key in clients}, top_k=top_k)
    for key, client in clients.items():
        client.api = chosen[key]
        # Only a second path shown to agree with the top-k may fill in an option missing from it.
        client.echo_fallback = caps[key].paths_agree is True
    return models


def failure_message(outcome: RunOutcome, run_dir: Path) -> str:
    parts = [f"{role} endpoint failed: {msg}" for role, msg in outcome.failed.items()]
    return "; ".join(parts) + f"; finished items are saved, resume with: servecmp mcq --resume {run_dir}"
