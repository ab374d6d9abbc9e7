"""`servecmp shadow serve | collect | report | replay`.

The endpoints are the shared ones: `--baseline` (the primary: clients get its answers; `--primary`
is the same option), `--candidate`, `--secondary`, their `--<role>-model` and `--<role>-key-env`,
over the `[baseline]` / `[candidate]` / `[secondary]` sections of servecmp.toml; `[shadow]` holds
only the proxy's own settings.

Only the standard library, typer and the shared option types are imported at module level, so
`servecmp --help` stays fast: the config (pydantic), the proxy (uvicorn, aiohttp) and the report
are imported inside the commands.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servecmp._cli import common as opt
from servecmp._cli.common import deprecated, renamed
from servecmp.errors import UserError, first_error

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.config import Config, ShadowConfig
    from servecmp.shadow.wiring import ShadowEndpoints

shadow_app = typer.Typer(
    help="Mirror live OpenAI-compatible traffic to a candidate and measure how far it diverges.",
    no_args_is_help=True,
)

BaselineOrPrimary = opt.option("--baseline", str, "Baseline endpoint URL: the primary, whose answers clients get.")
#: `--primary`, the name shadow used first: still accepted (with a note on stderr), hidden from --help.
OldPrimary = opt.legacy("--primary", "--baseline", str)
Db = opt.option("--db", str, "Where comparisons are stored: an SQLite file (default shadow.db) or "
                "postgresql://user@host/db.")
HashOnly = opt.option("--hash-only/--store-text", bool, "Store only SHA-256 of prompts and answers (no text).")
TeacherForced = opt.option("--teacher-forced/--no-teacher-forced", bool, "Score the primary's answer under the "
                           "candidate with vLLM prompt_logprobs (KL, top-1, Δp).")
MaxDbMb = opt.option("--max-db-mb", float, "Stop recording when the database reaches this size.")
Host = opt.option("--host", str, "Address to bind (default 127.0.0.1).")
Port = opt.option("--port", int, "Port to listen on (default 8100).")
SampleRate = opt.option("--sample-rate", float, "Share of requests to mirror.")
MaxQueued = opt.option("--max-queued", int, "Mirror jobs waiting at most (default 1000); more are dropped and "
                       "counted.")
MaxQueuedMb = opt.option("--max-queued-mb", float, "MiB of mirror jobs waiting at most (default 256); more are "
                         "dropped and counted.")
OldQueueSize = opt.legacy("--queue-size", "--max-queued", int)
Concurrency = opt.option("--concurrency", int, "Comparisons in flight at once (each calls the candidate and the "
                         "secondary).", min=1)
OldMirrorConcurrency = opt.legacy("--mirror-concurrency", "--concurrency", int)
MaxBodyMb = opt.option("--max-body-mb", float, "Request bodies over this are refused (413), never read past it "
                       "(default 16).")
MaxConnections = opt.option("--max-connections", int, "Client connections at once; requests beyond are answered 503 "
                            "(default 1000).")
MaxUpstreamConnections = opt.option("--max-upstream-connections", int, "Connections to the primary at once; more "
                                    "requests wait (default 256).")
HeaderTimeout = opt.option("--header-timeout", float, "Seconds for a request's head to arrive whole (default 10); "
                           "then the connection closes.")
BodyTimeout = opt.option("--body-timeout", float, "Seconds for a request's body to arrive whole (default 60); then "
                         "408.")
Keepalive = opt.option("--keepalive", float, "Seconds an idle client connection stays open (default 5).")
InProcess = opt.switch("--in-process", "Compare in this process (default: a separate, niced one).")
AccessLog = opt.switch("--access-log", "Log each request line (no bodies).")

#: The endpoints every shadow command compares: one candidate, the baseline also as `--primary` (hidden).
ENDPOINTS = (BaselineOrPrimary, opt.Candidate, opt.Secondary, opt.BaselineModel, opt.CandidateModel,
             opt.SecondaryModel, opt.BaselineKeyEnv, opt.CandidateKeyEnv, opt.SecondaryKeyEnv)
#: What a comparison records and scores (`serve`, `collect`, `replay`).
RECORD = (HashOnly, MaxDbMb)
SCORE = (TeacherForced, opt.TopK)
#: The receiving side of `serve` and `collect`, then its limits and the old names.
LISTEN = (Host, Port, Db, SampleRate, RECORD, MaxQueued, MaxQueuedMb, Concurrency)
LISTEN_LIMITS = (SCORE, InProcess, AccessLog, MaxBodyMb, MaxConnections, MaxUpstreamConnections, HeaderTimeout,
                 BodyTimeout, Keepalive, opt.ConfigFile, OldPrimary, OldQueueSize, OldMirrorConcurrency)

def register(app: typer.Typer) -> None:
    app.add_typer(shadow_app, name="shadow")


def _shadow_settings(cfg: Config, **overrides: Any) -> ShadowConfig:
    """`[shadow]` with the flags that were given (None: not given) on top."""
    from pydantic import ValidationError

    from servecmp.config import ShadowConfig

    data = cfg.shadow.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ShadowConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"shadow option {first_error(exc)}") from None


def _endpoints(
    cfg: Config, *, baseline: str | None, candidate: str | None, secondary: str | None,
    baseline_model: str | None, candidate_model: str | None, secondary_model: str | None,
    baseline_key_env: str | None, candidate_key_env: str | None, secondary_key_env: str | None,
) -> ShadowEndpoints:
    """The sections of servecmp.toml with the flags on top; a URL that is not one fails here, at once."""
    from servecmp.endpoints import endpoint_from
    from servecmp.shadow.wiring import ShadowEndpoints

    return ShadowEndpoints(
        baseline=endpoint_from("baseline", cfg.baseline, baseline, model=baseline_model,
                               api_key_env=baseline_key_env),
        candidate=endpoint_from("candidate", cfg.candidate, candidate, model=candidate_model,
                                api_key_env=candidate_key_env),
        secondary=(
            endpoint_from("secondary", cfg.secondary, secondary, model=secondary_model,
                          api_key_env=secondary_key_env)
            if secondary is not None or cfg.secondary is not None
            else None
        ),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Flags `shadow serve` and `shadow collect` share: endpoint flags by name, and settings flags with the
#: `ShadowConfig` field each sets.
_ENDPOINT_FLAGS = ("candidate", "secondary", "baseline_model", "candidate_model", "secondary_model",
                   "baseline_key_env", "candidate_key_env", "secondary_key_env")
_SETTINGS_FLAGS = {"host": "host", "port": "port", "db": "db", "sample_rate": "sample_rate", "hash_only": "hash_only",
                   "max_db_mb": "max_db_mb", "teacher_forced": "teacher_forced", "top_k": "top_k",
                   "max_queued_mb": "queue_mb", "max_body_mb": "max_body_mb", "max_connections": "max_connections",
                   "max_upstream_connections": "max_upstream_connections", "header_timeout": "header_timeout_s",
                   "body_timeout": "body_timeout_s", "keepalive": "keepalive_s"}


def _endpoint_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The endpoint flags of a shadow command (``--primary``, the old name of ``--baseline``, read with its note)."""
    return {**{k: flags[k] for k in _ENDPOINT_FLAGS},
            "baseline": renamed("--primary", flags["primary"], "--baseline", flags["baseline"])}


def _prepare(flags: dict[str, Any], *, exposed: str) -> tuple[Console, ShadowEndpoints, ShadowConfig]:
    """What `shadow serve` and `shadow collect` share before their app is built, from the command's
    flags: the stderr console, the endpoints and the settings (servecmp.toml overridden by flags;
    old flag names read with their note), a warning when listening beyond loopback (`exposed` says
    what that exposes), and logging to stderr."""
    endpoint_flags = _endpoint_flags(flags)  # first: its note comes before the settings' ones
    settings_flags = {field: flags[flag] for flag, field in _SETTINGS_FLAGS.items()}
    settings_flags["queue_size"] = renamed("--queue-size", flags["queue_size"], "--max-queued", flags["max_queued"])
    settings_flags["mirror_concurrency"] = renamed("--mirror-concurrency", flags["mirror_concurrency"],
                                                   "--concurrency", flags["concurrency"])
    mirror_process = False if flags["in_process"] else None
    import logging
    import sys

    from rich.console import Console

    from servecmp.config import load_config

    err_console = Console(stderr=True)
    file_cfg = load_config(flags["config"])
    endpoints = _endpoints(file_cfg, **endpoint_flags)
    cfg = _shadow_settings(file_cfg, mirror_process=mirror_process, **settings_flags)
    if not _is_loopback(cfg.host):
        err_console.print(f"[yellow]{exposed.format(host=cfg.host)}[/]")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return err_console, endpoints, cfg


@shadow_app.command("serve")
@opt.with_options(ENDPOINTS, LISTEN, LISTEN_LIMITS)
def serve(**flags: Any) -> None:
    """Run the proxy: clients get the primary's (baseline's) responses unchanged; the candidate gets a copy.

    The client's own Authorization header goes to the primary only. The key named by
    --baseline-key-env is for the requests servecmp itself makes to the primary (teacher-forced
    scoring), as is --baseline-model; the candidate and secondary get their own keys and models.
    Prometheus metrics (servecmp_shadow_*) are at GET /metrics on the same port.
    """
    from servecmp.shadow.proxy import build_proxy
    from servecmp.shadow.server import Limits, run_app
    from servecmp.shadow.store import redact_target, redact_url

    err_console, endpoints, cfg = _prepare(
        flags, exposed="shadow: listening on {host}, not a loopback address: every client that can reach it "
                          "uses the primary through this proxy")
    proxy = build_proxy(cfg, endpoints)
    floor = f", secondary {redact_url(endpoints.secondary.base_url)}" if endpoints.secondary else ""
    err_console.print(
        f"shadow: http://{cfg.host}:{cfg.port} → primary (baseline) {redact_url(endpoints.baseline.base_url)}; "
        f"mirroring "
        f"{cfg.sample_rate:.0%} to candidate {redact_url(endpoints.candidate.base_url)}{floor}; recording to "
        f"{redact_target(cfg.db)}" + (" (hashes only)" if cfg.hash_only else "") + f"; metrics at /metrics; run "
        f"{proxy.run_id}",
        highlight=False, markup=False,
    )
    run_app(proxy, host=cfg.host, port=cfg.port, access_log=flags["access_log"], limits=Limits.of(cfg))


MaxPending = Annotated[int | None, typer.Option(
    "--max-pending", min=1, help="Mirrored requests waiting for the baseline replica's answer at most "
    "(default 64); more are dropped and counted.")]
OldMaxPending = Annotated[int | None, typer.Option("--max-in-flight", min=1, hidden=True,
                                                   help="Old name of --max-pending.")]


@shadow_app.command("collect")
@opt.with_options(ENDPOINTS, LISTEN, opt.OWN, LISTEN_LIMITS)
def collect(max_pending: MaxPending = None, max_in_flight: OldMaxPending = None, **flags: Any) -> None:
    """Receive requests Envoy/Istio mirror here (answered 202 at once) and compare as `shadow serve` does.

    For each mirrored request: the --baseline replica answers it again, the candidate (and the
    secondary) too, and the measures are recorded as the proxy records them. No client waits on
    this process; it is not in the request path. Prometheus metrics are at GET /metrics.
    """
    from servecmp.shadow.collect import build_receiver
    from servecmp.shadow.server import Limits, run_app
    from servecmp.shadow.store import redact_target, redact_url

    err_console, endpoints, cfg = _prepare(
        flags, exposed="shadow collect: listening on {host}, not a loopback address: whoever can reach it can "
                          "make servecmp send requests to the baseline and the candidate")
    pending = renamed("--max-in-flight", max_in_flight, "--max-pending", max_pending)
    receiver = build_receiver(cfg, endpoints, max_in_flight=64 if pending is None else pending)
    floor = f", secondary {redact_url(endpoints.secondary.base_url)}" if endpoints.secondary else ""
    err_console.print(
        f"shadow collect: http://{cfg.host}:{cfg.port} ← mirrored requests; each sent to baseline "
        f"{redact_url(endpoints.baseline.base_url)} and candidate {redact_url(endpoints.candidate.base_url)}{floor} "
        f"({cfg.sample_rate:.0%} of them); recording to {redact_target(cfg.db)}"
        + (" (hashes only)" if cfg.hash_only else "") + f"; metrics at /metrics; run {receiver.run_id}",
        highlight=False, markup=False,
    )
    run_app(receiver, host=cfg.host, port=cfg.port, access_log=flags["access_log"], limits=Limits.of(cfg))


NBoot = opt.option("--n-boot", int, "Bootstrap resamples for the intervals (default 2000).", min=100)


@shadow_app.command("report")
@opt.with_options(opt.OWN, opt.OUTPUT, NBoot, opt.ConfigFile)
def report(
    db: Annotated[str | None, typer.Option(
        "--db", help="Shadow database written by `shadow serve`, `collect` or `replay`: an SQLite file "
        "or a postgresql:// URL.")] = None,
    old_db: Annotated[str | None, typer.Argument(metavar="DB", hidden=True, help="Old form of --db.")] = None,
    worst: Annotated[int | None, typer.Option("--worst", min=0, hidden=True, help="Old name of --show.")] = None,
    **flags: Any,
) -> None:
    """Summarise a shadow database: rates with 95% intervals, the noise floor, worst requests, per hour.

    `servecmp report DB` prints the same. With --gate (answer_differs, tf_kl, top1_disagree) or
    [gate] shadow = [...] in servecmp.toml: a verdict, exit 0 pass, 1 fail, 4 inconclusive.
    """
    from rich.console import Console

    from servecmp.finish import check_outputs, finish
    from servecmp.shadow.kind import ADAPTER
    from servecmp.shadow.summary import DEFAULT_N_BOOT, DEFAULT_WORST
    from servecmp.verdicts import resolve_gates

    if old_db is not None:
        deprecated("the database as an argument (shadow report DB)", "--db DB")
        if db is not None and db != old_db:
            raise UserError(f"shadow report: two databases given ({old_db} and --db {db})")
        db = old_db
    if db is None:
        raise UserError("shadow report: give the database with --db (an SQLite file or a postgresql:// URL)")
    shown = renamed("--worst", worst, "--show", flags["show"])
    gates = resolve_gates("shadow", flags["gate"], flags["config"])
    out = opt.output(flags, show=DEFAULT_WORST if shown is None else shown,
                     title=f"servecmp gates: shadow database {_db_name(db)}")
    check_outputs(out)
    n_boot = flags["n_boot"]
    view = ADAPTER.load(db, show=out.show, n_boot=DEFAULT_N_BOOT if n_boot is None else n_boot)
    # With --json, stdout holds only the JSON; the verdict block goes to stderr.
    code = finish("shadow", view, gates, out, Console(stderr=out.as_json))
    if code:
        raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it


def _db_name(db: str) -> str:
    from servecmp.shadow.store import is_postgres, redact_target

    return redact_target(db) if is_postgres(db) else Path(db).name


ReplayConcurrency = opt.option("--concurrency", int, "Requests in flight at most (default 8); the next waits for a "
                               "free one.", min=1)
OldReplayInFlight = opt.legacy("--max-in-flight", "--concurrency", int, min=1)


@shadow_app.command("replay")
@opt.with_options(ENDPOINTS, Db, opt.OWN, opt.Limit, ReplayConcurrency, OldReplayInFlight, OldPrimary, RECORD, SCORE,
                  opt.ConfigFile)
def replay_cmd(
    file: Annotated[str, typer.Argument(
        metavar="INPUT", help="OpenAI request JSONL, or a shadow database recorded with text: an SQLite file or a "
                              "postgresql:// URL.")],
    send_rps: Annotated[
        float,
        typer.Option("--send-rps",
                     help="Requests started per second: the send rate (not a per-endpoint cap like --rps elsewhere)."),
    ] = 2.0,
    old_rps: Annotated[float | None, typer.Option("--rps", hidden=True, help="Renamed --send-rps.")] = None,
    **flags: Any,
) -> None:
    """Send recorded requests to the primary (baseline) and the candidate (and secondary); record the measures.

    --baseline-model, when given, replaces the model named in the requests sent to the primary.
    """
    import asyncio

    from rich.console import Console

    from servecmp.config import load_config
    from servecmp.shadow.replay import load_requests, replay
    from servecmp.shadow.store import redact_target

    if old_rps is not None:
        # Elsewhere --rps caps servecmp's own requests per endpoint; here the number is the rate the
        # replay sends at, a different concept, so it has a different name.
        raise UserError("shadow replay: --rps is now --send-rps (the rate requests are sent at)")
    if send_rps <= 0:
        raise UserError("--send-rps must be positive")
    err_console = Console(stderr=True)
    file_cfg = load_config(flags["config"])
    endpoints = _endpoints(file_cfg, **_endpoint_flags(flags))
    cfg = _shadow_settings(file_cfg, **{k: flags[k] for k in ("db", "hash_only", "max_db_mb", "teacher_forced",
                                                              "top_k")})
    requests = load_requests(file, flags["limit"])
    err_console.print(f"shadow replay: {len(requests)} requests at {send_rps:g}/s → {redact_target(cfg.db)}",
                      highlight=False, markup=False)
    in_flight = renamed("--max-in-flight", flags["max_in_flight"], "--concurrency", flags["concurrency"])
    outcome = asyncio.run(replay(cfg, endpoints, requests, send_rps=send_rps,
                                 max_in_flight=8 if in_flight is None else in_flight))
    err_console.print(
        f"shadow replay: sent {outcome.sent}, compared {outcome.compared}, primary failed "
        f"{outcome.primary_failed} in {outcome.seconds:.1f} s (run {outcome.run_id}); "
        f"see `servecmp shadow report --db {redact_target(cfg.db)}`",
        highlight=False, markup=False,
    )
