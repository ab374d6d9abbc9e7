"""`servecmp serve` (run a baseline and a candidate vLLM server) and `servecmp models build`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from servecmp.config import ServeConfig, ServerConfig, load_config
from servecmp.errors import UserError
from servecmp.runstore import new_run_dir
from servecmp.serving.cpu import SCHEME_NAMES, SchemeName, describe_cpu, read_cpu_flags, scheme_support
from servecmp.serving.modelpair import DEFAULT_PORTS, embedded_servers, ensure_embedded_pair
from servecmp.serving.servers import ServerPair

console = Console(stderr=True)


def _say(message: str) -> None:
    console.print(f"servecmp: {message}", highlight=False, soft_wrap=True)


def _scheme(value: str) -> SchemeName:
    for name in SCHEME_NAMES:
        if value.lower() == name:
            return name
    raise UserError(f"unknown candidate scheme {value!r} (known: {', '.join(SCHEME_NAMES)})")


def configured_servers(serve: ServeConfig) -> dict[str, ServerConfig] | None:
    """The `[serve.baseline]` / `[serve.candidate]` servers, or None when neither is configured."""
    if serve.baseline is None and serve.candidate is None:
        return None
    if serve.baseline is None or serve.candidate is None:
        missing = "baseline" if serve.baseline is None else "candidate"
        raise UserError(f"servecmp.toml configures only one server: add a serve.{missing} section too (or neither)")
    return {"baseline": serve.baseline, "candidate": serve.candidate}


def resolve_servers(
    serve: ServeConfig,
    *,
    baseline_port: int | None = None,
    candidate_port: int | None = None,
    scheme: SchemeName = "w8a8",
) -> dict[str, ServerConfig]:
    """The configured pair, or else the embedded default pair (built on first use); ports from flags."""
    servers = configured_servers(serve)
    if servers is None:
        with console.status("preparing the embedded model pair (first use builds it, about a minute)"):
            pair = ensure_embedded_pair(candidate_scheme=scheme, log=_say)
        servers = embedded_servers(
            pair,
            baseline_port=baseline_port or DEFAULT_PORTS["baseline"],
            candidate_port=candidate_port or DEFAULT_PORTS["candidate"],
        )
        return servers
    overrides = {"baseline": baseline_port, "candidate": candidate_port}
    return {
        role: cfg.model_copy(update={"port": overrides[role]}) if overrides[role] else cfg
        for role, cfg in servers.items()
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: Annotated[Path | None, typer.Option("--config", "-c", help="servecmp.toml")] = None,
        baseline_port: Annotated[int | None, typer.Option(help="Port of the baseline server.")] = None,
        candidate_port: Annotated[int | None, typer.Option(help="Port of the candidate server.")] = None,
        candidate_scheme: Annotated[
            str, typer.Option(help="Embedded pair only: the candidate's quantization (w8a8, w4a16).")
        ] = "w8a8",
        runs_dir: Annotated[Path | None, typer.Option(help="Where the run directory (logs) goes.")] = None,
        startup_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for both.")] = None,
    ) -> None:
        """Start a baseline and a candidate vLLM server and keep them running until Ctrl-C.

        The servers come from serve.baseline / serve.candidate in servecmp.toml, or else are the
        embedded SmolLM2 pair (built on first use). Logs go to a run directory.
        """
        cfg = load_config(config)
        scheme = _scheme(candidate_scheme)
        servers = resolve_servers(
            cfg.serve, baseline_port=baseline_port, candidate_port=candidate_port, scheme=scheme
        )
        run_dir = new_run_dir(runs_dir or Path(cfg.serve.runs_dir), "serve")
        pair = ServerPair(
            servers,
            run_dir=run_dir,
            host=cfg.serve.host,
            startup_timeout_s=startup_timeout or cfg.serve.startup_timeout_s,
            stop_timeout_s=cfg.serve.stop_timeout_s,
            console=console,
        )
        console.print(f"servecmp: logs in {run_dir}")
        try:
            with pair:
                out = Console()
                for role, h in pair.handles.items():
                    took = f"ready after {h.ready_after_s:.0f} s" if h.ready_after_s is not None else ""
                    out.print(f"{role:9} {h.url}  model={h.served_name}  {took}", highlight=False, soft_wrap=True)
                b, c = pair.handles["baseline"], pair.handles["candidate"]
                console.print(
                    f"try: servecmp mcq --baseline {b.url} --candidate {c.url} --task mmlu-sample\n"
                    "Ctrl-C stops both servers.",
                    highlight=False,
                    soft_wrap=True,
                )
                while True:
                    time.sleep(1.0)
                    pair.check_alive()
        except KeyboardInterrupt:
            console.print(f"servecmp: stopped both servers (logs in {run_dir})")

    models = typer.Typer(help="The embedded default model pair (SmolLM2-135M-Instruct and a quantized copy).",
                         no_args_is_help=True)

    @models.command("build")
    def build(
        candidate_scheme: Annotated[str, typer.Option(help="Candidate quantization (w8a8, w4a16).")] = "w8a8",
    ) -> None:
        """Build (or find in the cache) the embedded pair and print the two checkpoint directories."""
        scheme = _scheme(candidate_scheme)
        pair = ensure_embedded_pair(candidate_scheme=scheme, log=_say)
        flags = read_cpu_flags()
        ok, why = scheme_support(scheme, flags)
        out = Console()
        out.print(f"baseline  {pair.baseline_dir}", highlight=False, soft_wrap=True)
        out.print(f"candidate {pair.candidate_dir}", highlight=False, soft_wrap=True)
        console.print(f"cpu: {describe_cpu(flags)}" + ("" if ok else f"; note: {why}"), highlight=False)

    app.add_typer(models, name="models")
