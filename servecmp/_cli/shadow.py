"""`servecmp shadow serve | report | replay`.

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

from servecmp._cli.common import (
    BaselineKeyEnv,
    BaselineModel,
    Candidate,
    CandidateKeyEnv,
    CandidateModel,
    ConfigFile,
    Gate,
    Json,
    Limit,
    Secondary,
    SecondaryKeyEnv,
    SecondaryModel,
    Show,
    SummaryMd,
    TopK,
    print_and_decide,
)
from servecmp.errors import UserError, first_error

if TYPE_CHECKING:
    from servecmp.config import Config, ShadowConfig
    from servecmp.shadow.wiring import ShadowEndpoints

shadow_app = typer.Typer(
    help="Mirror live OpenAI-compatible traffic to a candidate and measure how far it diverges.",
    no_args_is_help=True,
)

#: `--primary` stays as the name shadow used first; it is the same option as `--baseline`.
BaselineOrPrimary = Annotated[
    str | None,
    typer.Option("--baseline", "--primary",
                 help="Baseline endpoint URL: the primary, whose answers clients get (--primary: same)."),
]
Db = Annotated[str | None, typer.Option("--db", help="SQLite database for the comparisons (default shadow.db).")]
HashOnly = Annotated[
    bool | None, typer.Option("--hash-only/--store-text", help="Store only SHA-256 of prompts and answers (no text).")
]
TeacherForced = Annotated[
    bool | None,
    typer.Option("--teacher-forced/--no-teacher-forced",
                 help="Score the primary's answer under the candidate with vLLM prompt_logprobs (KL, top-1, Δp)."),
]
MaxDbMb = Annotated[
    float | None, typer.Option("--max-db-mb", help="Stop recording when the database reaches this size.")
]


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


@shadow_app.command("serve")
def serve(
    baseline: BaselineOrPrimary = None,
    candidate: Candidate = None,
    secondary: Secondary = None,
    baseline_model: BaselineModel = None,
    candidate_model: CandidateModel = None,
    secondary_model: SecondaryModel = None,
    baseline_key_env: BaselineKeyEnv = None,
    candidate_key_env: CandidateKeyEnv = None,
    secondary_key_env: SecondaryKeyEnv = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default 8100).")] = None,
    db: Db = None,
    sample_rate: Annotated[float | None, typer.Option("--sample-rate", help="Share of requests to mirror.")] = None,
    hash_only: HashOnly = None,
    max_db_mb: MaxDbMb = None,
    queue_size: Annotated[int | None, typer.Option("--queue-size", help="Mirror jobs waiting at most.")] = None,
    mirror_concurrency: Annotated[
        int | None, typer.Option("--mirror-concurrency", help="Comparisons at once.")
    ] = None,
    teacher_forced: TeacherForced = None,
    top_k: TopK = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="Compare in the proxy's own process (default: a separate, niced one).")
    ] = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log each request line (no bodies).")] = False,
    config: ConfigFile = None,
) -> None:
    """Run the proxy: clients get the primary's (baseline's) responses unchanged; the candidate gets a copy.

    The client's own Authorization header goes to the primary only. The key named by
    --baseline-key-env is for the requests servecmp itself makes to the primary (teacher-forced
    scoring), as is --baseline-model; the candidate and secondary get their own keys and models.
    """
    import logging
    import sys

    import uvicorn
    from rich.console import Console

    from servecmp.config import load_config
    from servecmp.shadow.proxy import build_app, build_proxy

    err_console = Console(stderr=True)
    file_cfg = load_config(config)
    endpoints = _endpoints(
        file_cfg, baseline=baseline, candidate=candidate, secondary=secondary, baseline_model=baseline_model,
        candidate_model=candidate_model, secondary_model=secondary_model, baseline_key_env=baseline_key_env,
        candidate_key_env=candidate_key_env, secondary_key_env=secondary_key_env,
    )
    cfg = _shadow_settings(
        file_cfg, host=host, port=port, db=db, sample_rate=sample_rate, hash_only=hash_only, max_db_mb=max_db_mb,
        queue_size=queue_size, mirror_concurrency=mirror_concurrency, teacher_forced=teacher_forced, top_k=top_k,
        mirror_process=False if in_process else None,
    )
    if not _is_loopback(cfg.host):
        err_console.print(f"[yellow]shadow: listening on {cfg.host}, not a loopback address: every client "
                          "that can reach it uses the primary through this proxy[/]")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    proxy = build_proxy(cfg, endpoints)
    floor = f", secondary {endpoints.secondary.base_url}" if endpoints.secondary else ""
    err_console.print(
        f"shadow: http://{cfg.host}:{cfg.port} → primary (baseline) {endpoints.baseline.base_url}; mirroring "
        f"{cfg.sample_rate:.0%} to candidate {endpoints.candidate.base_url}{floor}; recording to {cfg.db}"
        + (" (hashes only)" if cfg.hash_only else ""),
        highlight=False, markup=False,
    )
    uvicorn.run(build_app(proxy), host=cfg.host, port=cfg.port, log_level="warning", access_log=access_log,
                server_header=False, date_header=False)


@shadow_app.command("report")
def report(
    db: Annotated[Path, typer.Argument(help="Shadow database written by `shadow serve` or `shadow replay`.")],
    as_json: Json = False,
    show: Show = None,
    worst: Annotated[int | None, typer.Option("--worst", min=0, hidden=True, help="Old name of --show.")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=100, help="Bootstrap resamples for the intervals.")] = 2000,
    gate: Gate = None,
    summary_md: SummaryMd = None,
    config: ConfigFile = None,
) -> None:
    """Summarise a shadow database: rates with 95% intervals, the noise floor, worst requests, per hour.

    `servecmp report DB` prints the same. With --gate (answer_differs, tf_kl, top1_disagree) or
    [gate] shadow = [...] in servecmp.toml: a verdict, exit 0 pass, 1 fail, 4 inconclusive.
    """
    from rich.console import Console

    from servecmp.shadow.report import load_summary, render
    from servecmp.verdicts import resolve_gates

    if show is not None and worst is not None and show != worst:
        raise UserError(f"--show {show} and --worst {worst} disagree (--worst is the old name of --show)")
    gates = resolve_gates("shadow", gate, config)
    worst_n = show if show is not None else worst if worst is not None else 10
    summary = load_summary(db, worst_n=worst_n, n_boot=n_boot)
    console = Console(stderr=as_json)  # with --json, stdout holds only the JSON; the verdict block goes to stderr
    code = print_and_decide("shadow", summary, gates, as_json=as_json, render=lambda: render(summary, console, db),
                            console=console, summary_md=summary_md, candidate=None,
                            title=f"servecmp gates: shadow database {db.name}")
    if code:
        raise SystemExit(code)  # not typer.Exit: main() runs click with standalone_mode=False, which swallows it


@shadow_app.command("replay")
def replay_cmd(
    file: Annotated[Path, typer.Argument(help="OpenAI request JSONL, or a shadow database recorded with text.")],
    baseline: BaselineOrPrimary = None,
    candidate: Candidate = None,
    secondary: Secondary = None,
    baseline_model: BaselineModel = None,
    candidate_model: CandidateModel = None,
    secondary_model: SecondaryModel = None,
    baseline_key_env: BaselineKeyEnv = None,
    candidate_key_env: CandidateKeyEnv = None,
    secondary_key_env: SecondaryKeyEnv = None,
    db: Db = None,
    send_rps: Annotated[
        float,
        typer.Option("--send-rps",
                     help="Requests started per second: the send rate (not a per-endpoint cap like --rps elsewhere)."),
    ] = 2.0,
    old_rps: Annotated[float | None, typer.Option("--rps", hidden=True, help="Renamed --send-rps.")] = None,
    limit: Limit = None,
    max_in_flight: Annotated[int, typer.Option("--max-in-flight", min=1, help="Requests in flight at most.")] = 8,
    hash_only: HashOnly = None,
    max_db_mb: MaxDbMb = None,
    teacher_forced: TeacherForced = None,
    top_k: TopK = None,
    config: ConfigFile = None,
) -> None:
    """Send recorded requests to the primary (baseline) and the candidate (and secondary); record the measures.

    --baseline-model, when given, replaces the model named in the requests sent to the primary.
    """
    import asyncio

    from rich.console import Console

    from servecmp.config import load_config
    from servecmp.shadow.replay import load_requests, replay

    if old_rps is not None:
        # Elsewhere --rps caps servecmp's own requests per endpoint; here the number is the rate the
        # replay sends at, a different concept, so it has a different name.
        raise UserError("shadow replay: --rps is now --send-rps (the rate requests are sent at)")
    if send_rps <= 0:
        raise UserError("--send-rps must be positive")
    err_console = Console(stderr=True)
    file_cfg = load_config(config)
    endpoints = _endpoints(
        file_cfg, baseline=baseline, candidate=candidate, secondary=secondary, baseline_model=baseline_model,
        candidate_model=candidate_model, secondary_model=secondary_model, baseline_key_env=baseline_key_env,
        candidate_key_env=candidate_key_env, secondary_key_env=secondary_key_env,
    )
    cfg = _shadow_settings(file_cfg, db=db, hash_only=hash_only, max_db_mb=max_db_mb,
                           teacher_forced=teacher_forced, top_k=top_k)
    requests = load_requests(file, limit)
    err_console.print(f"shadow replay: {len(requests)} requests at {send_rps:g}/s → {cfg.db}",
                      highlight=False, markup=False)
    outcome = asyncio.run(replay(cfg, endpoints, requests, send_rps=send_rps, max_in_flight=max_in_flight))
    err_console.print(
        f"shadow replay: sent {outcome.sent}, compared {outcome.compared}, primary failed "
        f"{outcome.primary_failed} in {outcome.seconds:.1f} s (run {outcome.run_id}); "
        f"see `servecmp shadow report {cfg.db}`",
        highlight=False, markup=False,
    )
