"""Running a `servecmp gen` comparison: items, generations, teacher forcing, summary. Resumable.

Order of work: (1) a new run resolves the model names and the API (--api auto: completions when
every endpoint serves it and every item has a prompt, else chat), then writes manifest.json and
items.jsonl (every item's id, question, gold and rendered prompt: reports never reload the task);
(2) every endpoint generates the items it still lacks, concurrently, each item's samples appended to
records.jsonl as soon as its one request (``n`` = --samples) returns, with the generation's token ids
from the endpoint's /tokenize; (3) greedy runs teacher-force each compared endpoint along the
baseline's answer (one ``prompt_logprobs`` request per item and endpoint, the baseline's included),
appended to teacher_forcing.jsonl (the baseline's own top-k rows to baseline_forcing.jsonl, which
the candidates' KL is computed against); (4) the summary, rebuilt from the files on disk.

A run on a stored baseline (--baseline-run, servecmp.gen.stored) copies the stored baseline's
records and rows into the run before step (2) and never asks the baseline endpoint.

Resume: `--resume RUN_DIR` re-asks only what is missing. An item counts as done for an endpoint when
every one of its samples is on disk; a kill between two sample lines leaves an incomplete item,
which the summary ignores (`servecmp.gen.rundir.load_records`) and the resume asks again, so
nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from servecmp.concurrency import gather_or_cancel
from servecmp.endpoints import EndpointClient, EndpointError, HttpStatusError, api_key_from_env, root_url
from servecmp.errors import RunFailed, RunInterrupted, UserError
from servecmp.gen.records import BASELINE_FORCING, RECORDS, TEACHER_FORCING, BaselineForcing, GenRecord, TfRecord
from servecmp.gen.rundir import forcing_index, load_records, read_items, tf_targets, write_items
from servecmp.gen.settings import BASELINE, GenEndpoint, GenManifest, read_manifest, write_manifest
from servecmp.progress import counting_progress
from servecmp.runstore import JsonlAppender, iter_jsonl, new_run_dir, utcnow, write_json_atomic
from servecmp.tasks.gen_registry import require_code_consent
from servecmp.tasks.gen_task import CODE_GRADER, GSM8K_GRADER, GenItem

if TYPE_CHECKING:
    from servecmp.gen.stored import StoredPlan

SUMMARY = "summary.json"


@dataclass
class GenStats:
    """What this invocation did (not stored: the run directory holds the results)."""

    generated: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    tf_items: int = 0
    tf_wall_s: float = 0.0


@dataclass
class GenResult:
    run_dir: Path
    manifest: GenManifest
    stats: GenStats
    summary: Any  # servecmp.gen.summary.GenSummary


# ---- grading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graded:
    answer: str | None
    correct: bool
    answer_flexible: str | None = None
    correct_flexible: bool | None = None


def grade(item: GenItem, text: str) -> Graded:
    """GSM8K: lm-eval's strict-match (``answer``) and flexible-extract, each through its exact_match;
    other tasks: the item's grader."""
    from servecmp.tasks.extract import flexible_answer, lmeval_exact_match, parse_grader, strict_answer

    if item.grader == GSM8K_GRADER:
        strict, flexible = strict_answer(text), flexible_answer(text)
        return Graded(strict, lmeval_exact_match(strict, item.gold), flexible, lmeval_exact_match(flexible, item.gold))
    answer, correct = parse_grader(item.grader).grade(text, item.gold)
    return Graded(answer, correct)


async def grade_item(item: GenItem, text: str, *, allow_code: bool) -> Graded:
    """`grade`, and for code tasks: run the completion's unit tests in a sandboxed process (a worker
    thread waits for it). ``answer`` is then "passed" or why not; None for an empty completion."""
    if item.grader != CODE_GRADER:
        return grade(item, text)
    from servecmp.tasks.humaneval import HumanEvalProblem, run_completion

    if not text.strip():
        return Graded(None, False)
    problem = HumanEvalProblem(task_id="HumanEval/" + item.item_id.rsplit("/", 1)[-1], prompt=item.prompt or "",
                               entry_point=item.entry_point or "", test=item.tests or "", canonical_solution="")
    result = await asyncio.to_thread(run_completion, problem, text, allowed=allow_code)
    return Graded(result.reason, result.passed)


# ---- items file -------------------------------------------------------------------------------


# ---- endpoint helpers -------------------------------------------------------------------------


class Tokenizer:
    """An endpoint's vLLM ``POST /tokenize`` (at the server root, beside /v1). ``available`` turns
    False for good when the server has no such route (then divergence is measured in characters)."""

    def __init__(self, client: EndpointClient) -> None:
        from servecmp._http import make_transport

        self.client = client
        self.available = True
        self._transport = make_transport(root_url(client.spec.base_url),
                                         {"Authorization": f"Bearer {client.spec.api_key()}"}, client.spec.timeout_s)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def tokens(self, payload: dict[str, Any]) -> list[int] | None:
        if not self.available:
            return None
        from servecmp._http import TransportError

        body = json.dumps({"model": self.client.model, **payload}).encode()
        try:
            status, data = await self._transport.request("POST", "/tokenize", body)
        except TransportError:
            return None
        if status in (404, 405, 501):
            self.available = False
            return None
        if not 200 <= status < 300:
            return None
        try:
            return [int(t) for t in json.loads(data)["tokens"]]
        except (ValueError, KeyError, TypeError):
            return None

    async def text(self, text: str) -> list[int] | None:
        return await self.tokens({"prompt": text, "add_special_tokens": False})


async def _supports_completions(client: EndpointClient) -> bool:
    try:
        await client.completion("Hello", max_tokens=1)
    except EndpointError as exc:
        cause = exc.__cause__
        if isinstance(cause, HttpStatusError) and cause.status_code in (400, 404, 405, 422, 501):
            return False
        raise UserError(f"{client.spec.normalised_url()} failed the probe request: {exc}") from exc
    return True


async def resolve_api(manifest: GenManifest, clients: Mapping[str, EndpointClient], items: Sequence[GenItem]) -> str:
    """The API every endpoint is asked through (one for all, so the prompts are the same)."""
    chat_only_items = [it.item_id for it in items if it.prompt is None]
    if manifest.api == "chat":
        return "chat"
    if manifest.api == "completions":
        if chat_only_items:
            raise UserError(f"item {chat_only_items[0]} has only chat messages: use --api chat (or auto)")
        return "completions"
    if chat_only_items:
        return "chat"
    for client in clients.values():
        if not await _supports_completions(client):
            return "chat"
    return "completions"


def _request_body(manifest: GenManifest, endpoint: GenEndpoint) -> dict[str, Any]:
    body: dict[str, Any] = {"n": manifest.samples}
    if endpoint.seed is not None:
        body["seed"] = endpoint.seed
    return body


async def generate_one(client: EndpointClient, tokenizer: Tokenizer | None, manifest: GenManifest,
                       endpoint: GenEndpoint, item: GenItem, *, allow_code: bool = False) -> list[GenRecord]:
    """One request (``n`` samples) for one item; the records of every sample."""
    extra = {**_request_body(manifest, endpoint), "stop": item.stop}
    if endpoint.api == "chat":
        resp, latency = await client.chat(item.messages, max_tokens=manifest.max_tokens,
                                          temperature=manifest.temperature, extra_body=extra)
    else:
        assert item.prompt is not None
        resp, latency = await client.completion(item.prompt, max_tokens=manifest.max_tokens,
                                                temperature=manifest.temperature, extra_body=extra)
    choices = sorted(resp.get("choices") or [], key=lambda c: int(c.get("index") or 0))
    if len(choices) != manifest.samples:
        raise EndpointError(f"{client.spec.normalised_url()}: asked for {manifest.samples} completions, "
                            f"got {len(choices)}")
    usage = resp.get("usage") or {}
    out = []
    for i, choice in enumerate(choices):
        if endpoint.api == "chat":
            text = str((choice.get("message") or {}).get("content") or "")
        else:
            text = str(choice.get("text") or "")
        ids = await tokenizer.text(text) if tokenizer is not None and text else ([] if not text else None)
        # usage counts every sample together: exact per sample only for one sample.
        if manifest.samples == 1 and usage.get("completion_tokens") is not None:
            n_tokens: int | None = int(usage["completion_tokens"])
        else:
            n_tokens = len(ids) if ids is not None else None
        g = await grade_item(item, text, allow_code=allow_code)
        out.append(GenRecord(item_id=item.item_id, endpoint=endpoint.name, sample=i, text=text, answer=g.answer,
                             gold=item.gold, correct=g.correct, answer_flexible=g.answer_flexible,
                             correct_flexible=g.correct_flexible, finish_reason=choice.get("finish_reason"),
                             completion_tokens=n_tokens, token_ids=ids, latency_s=round(latency, 4)))
    return out


def done_keys(run_dir: Path, samples: int) -> set[tuple[str, str]]:
    """(endpoint, item) pairs with every sample on disk."""
    seen: dict[tuple[str, str], set[int]] = {}
    for obj in iter_jsonl(run_dir / RECORDS):
        try:
            seen.setdefault((str(obj["endpoint"]), str(obj["item_id"])), set()).add(int(obj["sample"]))
        except (KeyError, TypeError, ValueError):
            continue
    return {k for k, v in seen.items() if v >= set(range(samples))}


def _hint(run_dir: Path) -> str:
    return f"finished work is saved; resume with: servecmp gen --resume {run_dir}"


async def _generate(manifest: GenManifest, items: Sequence[GenItem], clients: Mapping[str, EndpointClient],
                    tokenizers: Mapping[str, Tokenizer], run_dir: Path, console: Console, is_tty: bool,
                    stats: GenStats, allow_code: bool) -> None:
    done = done_keys(run_dir, manifest.samples)
    floor = set(manifest.floor_items)
    todo: dict[str, list[GenItem]] = {}
    for e in _asked(manifest):  # a stored baseline's records are joined, never asked
        wanted = [it for it in items if e.role != "floor" or it.item_id in floor]
        todo[e.name] = [it for it in wanted if (e.name, it.item_id) not in done]
    if not any(todo.values()):
        return
    console.print("generating (max " + f"{manifest.max_tokens} tokens, {manifest.samples} sample"
                  + ("s" if manifest.samples > 1 else "") + "): "
                  + ", ".join(f"{n} {len(v)} items" for n, v in todo.items() if v), highlight=False, markup=False)
    with (JsonlAppender(run_dir / RECORDS) as out,
          counting_progress(console=console, transient=True, disable=not is_tty) as progress):

        async def one_endpoint(e: GenEndpoint) -> None:
            if not todo[e.name]:
                return
            client, tok = clients[e.name], tokenizers.get(e.name)
            bar = progress.add_task(f"{e.name}", total=len(todo[e.name]))
            t0 = time.perf_counter()
            stats.generated[e.name] = 0

            async def one(item: GenItem) -> None:
                # The seat is held until the item's records are written (tokenizing included), so the
                # work a kill can lose is at most one item per seat.
                async with client.slot():
                    for r in await generate_one(client, tok, manifest, e, item, allow_code=allow_code):
                        out.append(r)
                stats.generated[e.name] += 1
                progress.advance(bar)

            try:
                await gather_or_cancel([asyncio.ensure_future(one(it)) for it in todo[e.name]])
            except EndpointError as exc:
                raise RunFailed(f"{e.name} endpoint failed: {exc}; {stats.generated[e.name]} new items saved; "
                                + _hint(run_dir)) from exc
            finally:
                stats.wall_s[e.name] = time.perf_counter() - t0
                stats.requests[e.name] = client.stats.requests

        await gather_or_cancel([asyncio.ensure_future(one_endpoint(e)) for e in _asked(manifest)])


# ---- teacher forcing --------------------------------------------------------------------------


class TfUnavailable(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def prompt_logprobs(client: EndpointClient, ids: list[int], start: int, k: int) -> list[dict[str, float]]:
    """The top-k (plus the actual token) by token id at positions ``start..`` of ``ids``, from one
    ``max_tokens: 1`` completion with vLLM's ``prompt_logprobs``."""
    from servecmp.shadow.teacher_forcing import TfError, by_id, parse_prompt_logprobs

    try:
        resp, _ = await client.completion("", max_tokens=1, temperature=0.0,
                                          extra_body={"prompt": ids, "prompt_logprobs": k})
    except EndpointError as exc:
        cause = exc.__cause__
        if isinstance(cause, HttpStatusError) and 400 <= cause.status_code < 500:
            raise TfUnavailable("no_prompt_logprobs") from exc
        raise
    choices = resp.get("choices") or []
    if not choices or not choices[0].get("prompt_logprobs"):
        raise TfUnavailable("no_prompt_logprobs")
    try:
        return [by_id(p) for p in parse_prompt_logprobs(resp, start, len(ids) - start)]
    except TfError as exc:
        raise TfUnavailable(exc.code) from exc


def kl_along(base: Sequence[Mapping[str, float]], other: Sequence[Mapping[str, float]]) -> list[float]:
    """Per-position KL(baseline ‖ other): the tight top-k estimate (servecmp.metrics.kl)."""
    from servecmp.metrics.kl import topk_kl_tight_item

    return [round(topk_kl_tight_item(p, q).kl_bc, 9) for p, q in zip(base, other, strict=True)]


async def baseline_forcing(manifest: GenManifest, item: GenItem, base_record: GenRecord,
                           client: EndpointClient | None, tokenizer: Tokenizer | None) -> BaselineForcing:
    """The baseline teacher-forced along its own answer to ``item``: the token ids and its top-k per
    answer position, or why not (``client`` None: no live baseline to ask)."""

    def failed(code: str) -> BaselineForcing:
        return BaselineForcing(item_id=item.item_id, error=code)

    answer_ids = base_record.token_ids
    if not base_record.text or answer_ids == []:
        return failed("empty_answer")
    if answer_ids is None or client is None or tokenizer is None or not tokenizer.available:
        return failed("no_tokenize")
    if manifest.baseline.api == "chat":
        prompt_ids = await tokenizer.tokens({"messages": item.messages, "add_generation_prompt": True})
    else:
        prompt_ids = await tokenizer.tokens({"prompt": item.prompt})
    if prompt_ids is None:
        return failed("no_tokenize")
    ids = prompt_ids + answer_ids[: manifest.max_tokens]
    start = len(prompt_ids)
    try:
        top = await prompt_logprobs(client, ids, start, manifest.top_k)
    except TfUnavailable as exc:
        return failed(f"baseline_{exc.code}")
    return BaselineForcing(item_id=item.item_id, ids=ids, start=start, topk=top)


async def teacher_force_item(manifest: GenManifest, base: BaselineForcing, clients: Mapping[str, EndpointClient],
                             names: Sequence[str]) -> list[TfRecord]:
    """Each endpoint in ``names`` teacher-forced along the baseline's answer, scored against the
    baseline's stored top-k (``base``: asked in this run or joined from a stored baseline)."""
    if base.error is not None:
        return [TfRecord(item_id=base.item_id, endpoint=n, error=base.error) for n in names]
    out = []
    results = await asyncio.gather(*(prompt_logprobs(clients[n], base.ids, base.start, manifest.top_k)
                                     for n in names), return_exceptions=True)
    for n, res in zip(names, results, strict=True):
        if isinstance(res, TfUnavailable):
            out.append(TfRecord(item_id=base.item_id, endpoint=n, error=res.code))
        elif isinstance(res, BaseException):
            raise res
        else:
            try:
                kl = kl_along(base.topk, res)
            except ValueError:
                out.append(TfRecord(item_id=base.item_id, endpoint=n, error="misaligned"))
                continue
            out.append(TfRecord(item_id=base.item_id, endpoint=n, n_positions=len(kl), kl=kl))
    return out


async def _teacher_force(manifest: GenManifest, items: Sequence[GenItem], clients: Mapping[str, EndpointClient],
                         tokenizer: Tokenizer | None, run_dir: Path, console: Console, is_tty: bool,
                         stats: GenStats) -> None:
    """Every item lacking its baseline row (asked of the live baseline; a stored baseline's rows are
    joined beforehand) or a compared endpoint's record."""
    if not manifest.teacher_forcing or not manifest.greedy:
        return
    names = tf_targets(manifest)
    done: set[tuple[str, str]] = {(str(o.get("endpoint")), str(o.get("item_id")))
                                  for o in iter_jsonl(run_dir / TEACHER_FORCING)}
    stored = forcing_index(run_dir)
    base = {r.item_id: r for r in load_records(run_dir, manifest.samples) if r.endpoint == BASELINE}
    # A profile (no compared endpoint) is made of the rows themselves; otherwise an item whose every
    # record is stored needs no row (a run from before the rows were kept is not asked them again).
    todo = [it for it in items if it.item_id in base
            and (any((n, it.item_id) not in done for n in names) if names else it.item_id not in stored)]
    if not todo:
        return
    console.print(f"teacher forcing {', '.join([BASELINE, *names])} along the baseline's answers: {len(todo)} items",
                  highlight=False, markup=False)
    t0 = time.perf_counter()
    with (JsonlAppender(run_dir / TEACHER_FORCING) as out, JsonlAppender(run_dir / BASELINE_FORCING) as bout,
          counting_progress(console=console, transient=True, disable=not is_tty) as progress):
        bar = progress.add_task("teacher forcing", total=len(todo))

        async def one(item: GenItem) -> None:
            row = stored.read(item.item_id)
            if row is None:
                row = await baseline_forcing(manifest, item, base[item.item_id], clients.get(BASELINE), tokenizer)
                bout.append(row)
            missing = [n for n in names if (n, item.item_id) not in done]
            for rec in await teacher_force_item(manifest, row, clients, missing):
                out.append(rec)
            stats.tf_items += 1
            progress.advance(bar)

        try:
            await gather_or_cancel([asyncio.ensure_future(one(it)) for it in todo])
        except EndpointError as exc:
            raise RunFailed(f"teacher forcing failed: {exc}; " + _hint(run_dir)) from exc
        finally:
            stats.tf_wall_s = time.perf_counter() - t0


# ---- the run ----------------------------------------------------------------------------------


def _check_keys(manifest: GenManifest) -> None:
    for e in _asked(manifest):
        api_key_from_env(e.api_key_env, e.name)


def _asked(manifest: GenManifest) -> list[GenEndpoint]:
    """The endpoints the run asks: all but a stored baseline's (its answers are joined, never asked)."""
    return [e for e in manifest.endpoints if e.name != BASELINE or manifest.stored_baseline is None]


async def execute(manifest: GenManifest, items: Sequence[GenItem] | None, console: Console, *,
                  runs_root: Path | None = None, resume: Path | None = None, is_tty: bool = False,
                  show: int = 10, started: list[Path] | None = None, allow_code: bool = False,
                  stored: StoredPlan | None = None) -> GenResult:
    """Start a new run (``items`` given, under ``runs_root``) or finish the run in ``resume``.
    ``started`` gets the run directory as soon as it exists (so an interrupted caller can name it).
    ``stored``: a new run on a stored baseline (servecmp.gen.stored), whose records stand in for the
    baseline endpoint; the live baseline in ``manifest`` is then asked only the drift check, if given."""
    from servecmp.gen import stored as st

    live: GenEndpoint | None = None
    if stored is not None and resume is None:
        st.check_compatible(stored, manifest)
        live = manifest.baseline if stored.live else None
        manifest = st.adopt(stored, manifest)
    _check_keys(manifest)
    if live is not None:
        api_key_from_env(live.api_key_env, BASELINE)
    if items is not None:
        require_code_consent(items, allow_code)
    stats = GenStats()
    async with AsyncExitStack() as stack:
        clients: dict[str, EndpointClient] = {}
        for e in _asked(manifest):
            clients[e.name] = await stack.enter_async_context(EndpointClient(e))
        if resume is None:
            assert items is not None and runs_root is not None
            for e in _asked(manifest):
                await clients[e.name].resolve_model(e.name)
                e.model = clients[e.name].model
            if stored is not None:
                # Every candidate is asked through the API the stored baseline answered through.
                api = st.stored_api(stored.manifest)
                await st.require_api(api, clients, stored, _supports_completions)
            else:
                api = await resolve_api(manifest, clients, items)
            for e in manifest.endpoints:
                e.api = api  # type: ignore[assignment]
            fresh: list[GenRecord] = []
            if stored is not None and live is not None:
                live_client = await stack.enter_async_context(EndpointClient(live))
                await live_client.resolve_model(BASELINE)
                check, fresh = await st.drift_check(stored, items, live_client, console, generate_one,
                                                     allow_code=allow_code)
                assert manifest.stored_baseline is not None
                manifest.stored_baseline.check = check
            run_dir = new_run_dir(runs_root, "gen")
            write_items(run_dir, items)
            write_manifest(run_dir, manifest)
            st.write_check(run_dir, fresh)
            console.print(f"run directory: {run_dir}", highlight=False, markup=False)
        else:
            run_dir = resume
            items = read_items(run_dir, manifest)
            require_code_consent(items, allow_code)
            console.print(f"resuming {run_dir}", highlight=False, markup=False)
        if started is not None:
            started.append(run_dir)
        if manifest.stored_baseline is not None:
            joined = st.join(run_dir, manifest, items)
            console.print(st.stored_line(manifest.stored_baseline, joined), highlight=False, markup=False)
        tokenizers: dict[str, Tokenizer] = {}
        for name, client in clients.items():
            tokenizers[name] = Tokenizer(client)
            stack.push_async_callback(tokenizers[name].aclose)
        await _generate(manifest, items, clients, tokenizers, run_dir, console, is_tty, stats, allow_code)
        await _teacher_force(manifest, items, clients, tokenizers.get(BASELINE), run_dir, console, is_tty, stats)

    from servecmp.gen.summary import load_result

    summary = load_result(run_dir, show=show)
    on_disk = read_manifest(run_dir)  # the stored pacing, not this invocation's flags
    if summary.run.complete and on_disk.finished_at is None:
        on_disk.finished_at = utcnow()
        write_manifest(run_dir, on_disk)
        summary.run.finished_at = on_disk.finished_at
    write_json_atomic(run_dir / SUMMARY, summary.model_dump(mode="json", by_alias=True))
    return GenResult(run_dir=run_dir, manifest=manifest, stats=stats, summary=summary)


def run_blocking(manifest: GenManifest, items: Sequence[GenItem] | None, console: Console, **kwargs: Any) -> GenResult:
    """`execute` from synchronous code; Ctrl-C after the run directory exists becomes RunInterrupted
    (exit 130) naming it."""
    started: list[Path] = []
    try:
        return asyncio.run(execute(manifest, items, console, started=started, **kwargs))
    except KeyboardInterrupt:
        if not started:
            raise
        raise RunInterrupted(f"interrupted; finished items are saved in {started[0]}; "
                             f"resume with: servecmp gen --resume {started[0]}") from None
