"""`servecmp shadow serve | report | replay`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from servecmp.config import ShadowConfig, load_config
from servecmp.errors import UserError

shadow_app = typer.Typer(
    help="Mirror live OpenAI-compatible traffic to a candidate and measure how far it diverges.",
    no_args_is_help=True,
)

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", help="servecmp.toml to read (default: ./servecmp.toml if any).")
PrimaryOpt = typer.Option(None, "--primary", help="Baseline endpoint URL (http://host:port[/v1]).")
CandidateOpt = typer.Option(None, "--candidate", help="Candidate endpoint URL.")
SecondaryOpt = typer.Option(
    None, "--secondary", help="A second replica of the baseline: measures the noise floor."
)
DbOpt = typer.Option(None, "--db", help="SQLite database for the comparisons (default shadow.db).")
HashOpt = typer.Option(
    None, "--hash-only/--store-text", help="Store only SHA-256 of prompts and answers (no text)."
)
TfOpt = typer.Option(
    None, "--teacher-forced/--no-teacher-forced",
    help="Score the primary's answer under the candidate with vLLM prompt_logprobs (KL, top-1, Δp).",
)
TopKOpt = typer.Option(None, "--top-k", help="Top-k logprobs per position for teacher forcing.")
CandModelOpt = typer.Option(None, "--candidate-model", help="Model name to send to the candidate.")
SecModelOpt = typer.Option(None, "--secondary-model", help="Model name to send to the secondary.")
MaxDbOpt = typer.Option(None, "--max-db-mb", help="Stop recording when the database reaches this size.")


def register(app: typer.Typer) -> None:
    app.add_typer(shadow_app, name="shadow")


def _config(path: Path | None, **overrides: Any) -> ShadowConfig:
    base = load_config(path).shadow
    data = base.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ShadowConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"shadow option {loc}: {first['msg']}") from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@shadow_app.command("serve")
def serve(
    primary: str | None = PrimaryOpt,
    candidate: str | None = CandidateOpt,
    secondary: str | None = SecondaryOpt,
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on (default 8100)."),
    db: str | None = DbOpt,
    sample_rate: float | None = typer.Option(None, "--sample-rate", help="Share of requests to mirror."),
    hash_only: bool | None = HashOpt,
    max_db_mb: float | None = MaxDbOpt,
    queue_size: int | None = typer.Option(None, "--queue-size", help="Mirror jobs waiting at most."),
    mirror_concurrency: int | None = typer.Option(None, "--mirror-concurrency", help="Comparisons at once."),
    candidate_model: str | None = CandModelOpt,
    secondary_model: str | None = SecModelOpt,
    teacher_forced: bool | None = TfOpt,
    top_k: int | None = TopKOpt,
    in_process: bool = typer.Option(
        False, "--in-process", help="Compare in the proxy's own process (default: a separate, niced one)."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log each request line (no bodies)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Run the proxy: clients get the primary's responses unchanged; the candidate gets a copy."""
    import uvicorn

    from servecmp.shadow.proxy import build_app, build_proxy

    cfg = _config(
        config, primary=primary, candidate=candidate, secondary=secondary, host=host, port=port, db=db,
        sample_rate=sample_rate, hash_only=hash_only, max_db_mb=max_db_mb, queue_size=queue_size,
        mirror_concurrency=mirror_concurrency, candidate_model=candidate_model,
        secondary_model=secondary_model, teacher_forced=teacher_forced, top_k=top_k,
        mirror_process=False if in_process else None,
    )
    if not _is_loopback(cfg.host):
        err_console.print(f"[yellow]shadow: listening on {cfg.host}, not a loopback address: every client "
                          "that can reach it uses the primary through this proxy[/]")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    proxy = build_proxy(cfg)
    floor = f", secondary {cfg.secondary}" if cfg.secondary else ""
    err_console.print(
        f"shadow: http://{cfg.host}:{cfg.port} → primary {cfg.primary}; mirroring {cfg.sample_rate:.0%} to "
        f"candidate {cfg.candidate}{floor}; recording to {cfg.db}"
        + (" (hashes only)" if cfg.hash_only else ""),
        highlight=False,
    )
    uvicorn.run(build_app(proxy), host=cfg.host, port=cfg.port, log_level="warning", access_log=access_log,
                server_header=False, date_header=False)


@shadow_app.command("report")
def report(
    db: Path = typer.Argument(..., help="Shadow database written by `shadow serve` or `shadow replay`."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    worst: int = typer.Option(10, "--worst", min=0, help="How many worst-diverging requests to list."),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, help="Bootstrap resamples for the intervals."),
) -> None:
    """Summarise a shadow database: rates with 95% intervals, the noise floor, worst requests, per hour."""
    from servecmp.shadow.report import load, render, summarise

    rows, counters, runs = load(db)
    summary = summarise(rows, counters=counters, runs=runs, worst_n=worst, n_boot=n_boot)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        render(summary, console, db)


@shadow_app.command("replay")
def replay_cmd(
    file: Path = typer.Argument(..., help="OpenAI request JSONL, or a shadow database recorded with text."),
    primary: str | None = PrimaryOpt,
    candidate: str | None = CandidateOpt,
    secondary: str | None = SecondaryOpt,
    db: str | None = DbOpt,
    rps: float = typer.Option(2.0, "--rps", help="Requests started per second."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Replay at most this many requests."),
    max_in_flight: int = typer.Option(8, "--max-in-flight", min=1, help="Requests in flight at most."),
    hash_only: bool | None = HashOpt,
    max_db_mb: float | None = MaxDbOpt,
    candidate_model: str | None = CandModelOpt,
    secondary_model: str | None = SecModelOpt,
    teacher_forced: bool | None = TfOpt,
    top_k: int | None = TopKOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Send recorded requests to the primary and the candidate (and secondary) and record the measures."""
    from servecmp.shadow.replay import load_requests, replay

    cfg = _config(
        config, primary=primary, candidate=candidate, secondary=secondary, db=db, hash_only=hash_only,
        max_db_mb=max_db_mb, candidate_model=candidate_model, secondary_model=secondary_model,
        teacher_forced=teacher_forced, top_k=top_k,
    )
    if rps <= 0:
        raise UserError("--rps must be positive")
    requests = load_requests(file, limit)
    err_console.print(f"shadow replay: {len(requests)} requests at {rps:g}/s → {cfg.db}", highlight=False)
    outcome = asyncio.run(replay(cfg, requests, rps=rps, max_in_flight=max_in_flight))
    err_console.print(
        f"shadow replay: sent {outcome.sent}, compared {outcome.compared}, primary failed "
        f"{outcome.primary_failed} in {outcome.seconds:.1f} s (run {outcome.run_id}); "
        f"see `servecmp shadow report {cfg.db}`",
        highlight=False,
    )
