"""What an endpoint can do, found out with a handful of tiny requests before any item is sent.

`probe_capabilities` asks one endpoint, in this order:

    completions   POST /v1/completions, max_tokens=1, logprobs=k: top-k logprobs come back
    top_k         how many top logprobs it serves: k, or the maximum a refusal states (vLLM says
                  "... greater than max allowed: 20"), asked again at that maximum
    chat          POST /v1/chat/completions, max_tokens=1, logprobs=true, top_logprobs=k
    echo          /v1/completions with echo=true returns the prompt tokens' logprobs (one prompt
                  per request: llama-cpp-python's server refuses prompt lists)
    tokenize      POST /tokenize (vLLM) or /extras/tokenize (llama-cpp-python) answers
    paths agree   on one real prompt (the run's first letter item), each option's logprob read from
                  the top-k at the answer position vs the same token's echoed prompt logprob
                  (prompt + " A" with echo=true, max_tokens=1, logprobs=1): the largest gap in nats

The two logprob paths are separate code in a server (vLLM computes prompt logprobs in another
pass than the sampler's logprobs), and they need not agree: vLLM's CPU W8A8 build was seen to
differ by a median 0.21 nats between them. servecmp reads letter options from the top-k and used
to fill an option missing from it from the echo path; with disagreeing paths that would mix two
measurements in one distribution, so `McqRecord.echo_options` counts every such option and the
scorer stops using echo on an endpoint whose paths disagree (`PATH_GAP_WARN_NATS`).

`choose_api` then picks, per run, the cheapest request shape every endpoint supports: completions
top-k (one request per item, with an echo fallback) before chat (one request per item, no fallback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from servecmp.endpoints import EndpointClient, HttpStatusError, describe_error, root_url
from servecmp.errors import EndpointError, UserError

ApiKind = Literal["completions", "chat"]
ApiChoice = Literal["auto", "completions", "chat"]
API_CHOICES: tuple[str, ...] = ("auto", "completions", "chat")

#: Above this gap (nats) between an endpoint's top-k and echo logprobs for the same token, the two
#: paths are reported as disagreeing and the echo fallback is not used on that endpoint. Real
#: servers that compute both in one pass agree to float rounding (~1e-6); 0.02 nats is already a
#: visible share of the option KL of an 8-bit candidate on MMLU (about 0.01).
PATH_GAP_WARN_NATS = 0.02

#: The vLLM refusal that states its maximum: "... greater than max allowed: 20 (parameter=...".
_MAX_ALLOWED = re.compile(r"max(?:imum)?(?: allowed)?[^0-9]{0,20}(\d+)", re.IGNORECASE)

#: A letter prompt for the path check when the task has no letter item (continuation tasks).
PROBE_PROMPT = ("The following are multiple choice questions (with answers).\n\n"
                "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
PROBE_CONTINUATIONS = (" A", " B", " C", " D")
#: Top logprobs the probe asks for at least (OpenAI's own maximum for chat, vLLM's usual --max-logprobs).
PROBE_TOP_K = 20
#: The OpenAI `user` field of every probe request: tells them apart from item requests in server
#: logs (and in the tests' stubs).
PROBE_USER = "servecmp-capability-probe"
_MARK = {"user": PROBE_USER}


class EndpointCapabilities(BaseModel):
    """What one endpoint supports, as the probe found it (recorded in the run manifest)."""

    #: /v1/completions answers with top-k logprobs at the generated position.
    completions: bool = False
    #: /v1/chat/completions answers (with or without logprobs).
    chat: bool = False
    #: /v1/chat/completions returns `top_logprobs` for the first generated token.
    chat_logprobs: bool = False
    #: The number of top logprobs it served when asked for max(k, `PROBE_TOP_K`): that number, or
    #: the maximum a refusal stated.
    top_k: int | None = None
    #: The maximum number of top logprobs the endpoint stated when it refused more (vLLM's
    #: --max-logprobs); None when it refused nothing.
    top_k_max: int | None = None
    #: Prompt logprobs through /v1/completions with echo=true.
    echo: bool = False
    #: A tokenize route (vLLM's /tokenize or llama-cpp-python's /extras/tokenize).
    tokenize: bool = False
    #: Largest |top-k − echo| logprob of the same option token on the probe prompt (nats); None
    #: when it could not be measured (no echo, no completions, or no option in both).
    path_gap_nats: float | None = None
    #: Options compared for `path_gap_nats`.
    path_gap_options: int = 0
    #: Why a capability is missing, in words (one entry per finding).
    notes: list[str] = Field(default_factory=list)

    @property
    def paths_agree(self) -> bool | None:
        return None if self.path_gap_nats is None else self.path_gap_nats <= PATH_GAP_WARN_NATS

    @property
    def letter_apis(self) -> list[ApiKind]:
        """The request shapes that can score a letter item, cheapest first."""
        out: list[ApiKind] = []
        if self.completions:
            out.append("completions")
        if self.chat_logprobs:
            out.append("chat")
        return out

    def describe(self) -> str:
        """One line: what it supports and what it does not."""
        def mark(ok: bool, name: str) -> str:
            return name if ok else f"no {name}"

        parts = [mark(self.completions, "completions"),
                 mark(self.chat_logprobs, "chat logprobs") if self.chat else "no chat",
                 f"top-k {self.top_k}" if self.top_k is not None else "top-k unknown",
                 mark(self.echo, "echo"), mark(self.tokenize, "tokenize")]
        if self.path_gap_nats is not None:
            verdict = "agree" if self.paths_agree else "DISAGREE"
            parts.append(f"top-k vs echo {verdict} (max gap {self.path_gap_nats:.3g} nats over "
                         f"{self.path_gap_options} options)")
        elif self.echo:
            parts.append("top-k vs echo not compared (no option in the probe's top-k): echo fallback off")
        return ", ".join(parts)


def _status(exc: EndpointError) -> int | None:
    cause = exc.__cause__
    return cause.status_code if isinstance(cause, HttpStatusError) else exc.status


def _cause_text(exc: EndpointError) -> str:
    cause = exc.__cause__
    return describe_error(cause) if cause is not None else str(exc)


def _stated_max(exc: EndpointError) -> int | None:
    cause = exc.__cause__
    if not isinstance(cause, HttpStatusError):
        return None
    match = _MAX_ALLOWED.search(cause.text)
    return int(match.group(1)) if match else None


def _completion_top(resp: Mapping[str, Any]) -> dict[str, float]:
    choices = resp.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    top = tops[-1] if tops else None
    return {str(t): float(v) for t, v in top.items()} if isinstance(top, dict) else {}


async def _probe_completions(client: EndpointClient, caps: EndpointCapabilities, k: int) -> None:
    try:
        resp, _ = await client.completion("Hello", max_tokens=1, logprobs=k, extra_body=_MARK)
    except EndpointError as exc:
        status = _status(exc)
        stated = _stated_max(exc)
        if status == 400 and stated is not None and 0 < stated < k:
            caps.notes.append(f"top-k capped at {stated} (asked {k})")
            caps.top_k_max = stated
            try:
                resp, _ = await client.completion("Hello", max_tokens=1, logprobs=stated, extra_body=_MARK)
            except EndpointError as again:
                caps.notes.append(f"completions: {_cause_text(again)}")
                return
        else:
            caps.notes.append(f"completions: {_cause_text(exc)}")
            return
    top = _completion_top(resp)
    if not top:
        caps.notes.append("completions answered without logprobs")
        return
    caps.completions = True
    caps.top_k = len(top)


async def _chat_once(client: EndpointClient, k: int) -> Any:
    resp, _ = await client.chat([{"role": "user", "content": "Hello"}], max_tokens=1,
                                extra_body={"logprobs": True, "top_logprobs": k, **_MARK})
    return resp


async def _probe_chat(client: EndpointClient, caps: EndpointCapabilities, k: int) -> None:
    # Ask for what the run would read: the completions top-k when known, else k.
    ask = min(k, caps.top_k) if caps.top_k else k
    try:
        resp = await _chat_once(client, ask)
    except EndpointError as exc:
        stated = _stated_max(exc)
        if not (_status(exc) == 400 and stated is not None and 0 < stated < ask):
            caps.notes.append(f"chat: {_cause_text(exc)}")
            return
        caps.notes.append(f"chat top_logprobs capped at {stated}")
        try:
            resp = await _chat_once(client, stated)
        except EndpointError as again:
            caps.notes.append(f"chat: {_cause_text(again)}")
            return
    caps.chat = True
    top = chat_top(resp)
    if top:
        caps.chat_logprobs = True
        if caps.top_k is None:
            caps.top_k = len(top)
    else:
        caps.notes.append("chat answered without top_logprobs")


def chat_top(resp: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The top logprobs of the first generated token of a chat response, as (token, logprob)."""
    choices = resp.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content or not isinstance(content[0], dict):
        return []
    return [(str(e["token"]), float(e["logprob"])) for e in content[0].get("top_logprobs") or []
            if isinstance(e, dict) and "token" in e and e.get("logprob") is not None]


def echo_logprob_at(logprobs: Mapping[str, Any], offset: int) -> float | None:
    """The echoed logprob of the prompt token that starts at character `offset`, if one does."""
    for off, lp in zip(logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or [], strict=False):
        if off == offset and lp is not None:
            return float(lp)
    return None


async def _probe_echo_and_paths(client: EndpointClient, caps: EndpointCapabilities, prompt: str,
                                continuations: Sequence[str]) -> None:
    """Echo support, and on `prompt` the largest gap between the two logprob paths.

    One echo request per option rather than one prompt list: llama-cpp-python's server takes a single
    prompt per request (a list of several fails with HTTP 500)."""
    echoed: dict[str, float] = {}
    for cont in continuations:
        try:
            resp, _ = await client.completion(prompt + cont, max_tokens=1, logprobs=1, echo=True, extra_body=_MARK)
        except EndpointError as exc:
            caps.notes.append(f"echo: {_cause_text(exc)}")
            return
        choices = resp.get("choices") or []
        lps = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
        lp = echo_logprob_at(lps, len(prompt)) if isinstance(lps, dict) else None
        if lp is not None:
            echoed[cont] = lp
    if not echoed:
        caps.notes.append("echo=true returned no prompt logprobs")
        return
    caps.echo = True
    if not caps.completions or not caps.top_k:
        return
    try:
        resp, _ = await client.completion(prompt, max_tokens=1, logprobs=caps.top_k, extra_body=_MARK)
    except EndpointError as exc:
        caps.notes.append(f"top-k on the probe prompt: {_cause_text(exc)}")
        return
    top = _completion_top(resp)
    gaps = [abs(top[c] - lp) for c, lp in echoed.items() if c in top]
    if gaps:
        caps.path_gap_nats = max(gaps)
        caps.path_gap_options = len(gaps)


async def _probe_tokenize(client: EndpointClient, caps: EndpointCapabilities) -> None:
    from servecmp._http import TransportError, make_transport

    transport = make_transport(root_url(client.spec.base_url),
                               {"Authorization": f"Bearer {client.spec.api_key()}"}, client.spec.timeout_s)
    try:
        # vLLM's route, then llama-cpp-python's: the first that answers with tokens counts.
        for path, body in (("/tokenize", {"model": client.model, "prompt": "Hello", **_MARK}),
                           ("/extras/tokenize", {"model": client.model, "input": "Hello"})):
            try:
                status, data = await transport.request("POST", path, json.dumps(body).encode())
            except TransportError:
                continue
            if 200 <= status < 300:
                try:
                    tokens = json.loads(data).get("tokens")
                except (ValueError, AttributeError):
                    tokens = None
                if isinstance(tokens, list) and tokens:
                    caps.tokenize = True
                    return
    finally:
        await transport.aclose()


async def probe_capabilities(client: EndpointClient, k: int, *, prompt: str = PROBE_PROMPT,
                             continuations: Sequence[str] = PROBE_CONTINUATIONS) -> EndpointCapabilities:
    """Probe one endpoint (its model resolved already); never raises for a missing capability,
    only for an endpoint that cannot be reached at all (EndpointError)."""
    caps = EndpointCapabilities()
    # At least PROBE_TOP_K, so the path check finds the options even when the run asks for few.
    await _probe_completions(client, caps, max(k, PROBE_TOP_K))
    await _probe_chat(client, caps, max(k, PROBE_TOP_K))
    await _probe_echo_and_paths(client, caps, prompt, continuations)
    await _probe_tokenize(client, caps)
    return caps


def choose_api(caps: Mapping[str, EndpointCapabilities], requested: ApiChoice, *, letter: bool,
               labels: Mapping[str, str] | None = None, top_k: int | None = None) -> dict[str, ApiKind]:
    """The API each endpoint is asked through. UserError, naming the endpoint and what it lacks,
    when a task cannot be scored through what an endpoint offers.

    - continuation tasks need echoed prompt logprobs from /v1/completions on every endpoint;
    - `requested` completions/chat: every endpoint must support it;
    - auto: completions when every endpoint has it, else chat when every endpoint has chat
      logprobs, else each endpoint its own cheapest (the run then says the kinds differ).
    """
    def name(key: str) -> str:
        return (labels or {}).get(key, key)

    def why(c: EndpointCapabilities) -> str:
        return "; ".join(c.notes) or "not supported"

    for key, c in caps.items():
        if top_k is not None and letter and c.top_k_max is not None and top_k > c.top_k_max:
            raise UserError(f"--top-k {top_k}: the {name(key)} endpoint serves at most {c.top_k_max} top logprobs; "
                            f"use --top-k {c.top_k_max} or less (vLLM: start it with --max-logprobs {top_k})")

    if not letter:
        if requested == "chat":
            raise UserError("continuation tasks (arc, hellaswag, piqa, winogrande) score each choice's echoed "
                            "prompt logprobs, which /v1/chat/completions cannot return: use --api completions")
        for key, c in caps.items():
            if not (c.completions and c.echo):
                raise UserError(f"{name(key)} endpoint cannot score a continuation task: it needs /v1/completions "
                                f"with echo=true prompt logprobs ({why(c)})")
        return {key: "completions" for key in caps}
    if requested in ("completions", "chat"):
        for key, c in caps.items():
            if requested not in c.letter_apis:
                what = ("/v1/completions with top-k logprobs" if requested == "completions"
                        else "/v1/chat/completions with top_logprobs")
                raise UserError(f"--api {requested}: the {name(key)} endpoint has no {what} ({why(c)})")
        return {key: requested for key in caps}
    for kind in ("completions", "chat"):
        if all(kind in c.letter_apis for c in caps.values()):
            return {key: kind for key in caps}
    out: dict[str, ApiKind] = {}
    for key, c in caps.items():
        if not c.letter_apis:
            raise UserError(f"{name(key)} endpoint returns no logprobs through /v1/completions or "
                            f"/v1/chat/completions ({why(c)}); servecmp needs top-k logprobs (vLLM: --max-logprobs)")
        out[key] = c.letter_apis[0]
    return out


def probe_findings(clients: Mapping[str, EndpointClient]) -> dict[str, Any]:
    """The manifest fields (`McqManifest.endpoint_apis`, `.capabilities`) of probed clients, by
    endpoint name; empty when the clients were not probed."""
    if any(c.capabilities is None for c in clients.values()):
        return {}
    return {"endpoint_apis": {name: c.api for name, c in clients.items()},
            "capabilities": {name: c.capabilities for name, c in clients.items()}}


def capability_lines(clients: Mapping[str, EndpointClient]) -> list[str]:
    """One line per probed endpoint (what it supports, which API it is asked through), then a
    warning per finding that affects the results: logprob paths that disagree, API kinds that differ."""
    lines: list[str] = []
    for name, c in clients.items():
        caps: EndpointCapabilities | None = c.capabilities
        if caps is None:
            continue
        lines.append(f"{name:>9}: asked through {c.api}; supports {caps.describe()}")
    for name, c in clients.items():
        caps = c.capabilities
        if caps is not None and caps.paths_agree is False:
            lines.append(
                f"warning: {name}'s top-k and echoed prompt logprobs differ by up to {caps.path_gap_nats:.3g} nats "
                f"(> {PATH_GAP_WARN_NATS}) on the probe prompt: options outside its top-k are bounded by the "
                "smallest top-k logprob (counted as censored) instead of being read from echo")
    kinds = {c.api for c in clients.values() if c.capabilities is not None}
    if len(kinds) > 1:
        by_kind = ", ".join(f"{name} {c.api}" for name, c in clients.items())
        lines.append(f"warning: the endpoints are NOT asked through the same API ({by_kind}): a chat template "
                     "changes what the model sees, so differences mix the API with the model")
    return lines


def check_resumed_apis(manifest: Any, clients: Mapping[str, EndpointClient]) -> None:
    """A resumed run must ask each endpoint through the API its records came from."""
    # A manifest from before the probe existed: every record came through completions.
    recorded = getattr(manifest, "endpoint_apis", None) or dict.fromkeys(clients, "completions")
    for name, c in clients.items():
        was = recorded.get(name)
        if was is not None and was != c.api:
            raise UserError(f"cannot resume: the {name} endpoint was asked through {was} and would now be asked "
                            f"through {c.api} (its capabilities changed); start a new run")
