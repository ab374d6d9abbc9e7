"""`servecmp serve` (run a baseline and a candidate vLLM server) and `servecmp models build`.

Module level imports only the standard library, typer and servecmp.errors, so `--help` stays fast;
everything else is imported inside the commands.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servecmp._cli.common import legacy_option, renamed
from servecmp.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.config import ServeConfig, ServerConfig
    from servecmp.serving.cpu import Scheme

#: The candidate scheme forms (servecmp.serving.cpu.SCHEME_HELP, repeated here to keep --help light;
#: tests/test_ladder.py checks the two agree).
SCHEME_HELP = "w8a8, w8a8-tensor, w4a16, rtn-intB (B 2-8, simulated), drop-N (layers), prune-P (percent 1-99)"


@functools.cache
def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _say(message: str) -> None:
    _console().print(f"servecmp: {message}", highlight=False, soft_wrap=True)


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
    scheme: str | Scheme = "w8a8",
    flags: frozenset[str] | None = None,
) -> dict[str, ServerConfig]:
    """The configured pair, or else the embedded default pair (built on first use); ports from flags.

    A candidate scheme this machine cannot serve is refused before anything is built or started.
    """
    from servecmp.serving.cpu import parse_scheme, read_cpu_flags, scheme_support
    from servecmp.serving.modelpair import DEFAULT_PORTS, embedded_servers, ensure_embedded_pair

    servers = configured_servers(serve)
    if servers is None:
        flags = read_cpu_flags() if flags is None else flags
        parsed = parse_scheme(scheme)
        ok, why = scheme_support(parsed, flags)
        if not ok:
            raise UserError(f"candidate scheme {parsed.name}: {why}")
        with _console().status("preparing the embedded model pair (first use builds it, about a minute)"):
            pair = ensure_embedded_pair(candidate_scheme=parsed, log=_say)
        return embedded_servers(
            pair,
            baseline_port=baseline_port or DEFAULT_PORTS["baseline"],
            candidate_port=candidate_port or DEFAULT_PORTS["candidate"],
            flags=flags,
        )
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
            str, typer.Option(help=f"Embedded pair only: the candidate's compression ({SCHEME_HELP}).")
        ] = "w8a8",
        runs_dir: Annotated[Path | None, typer.Option(help="Where the run directory (logs) goes.")] = None,
        startup_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for both.")] = None,
        candidate_gguf: Annotated[str | None, typer.Option(
            "--candidate-gguf", metavar="PATH|TYPE",
            help="Serve the candidate with llama.cpp instead: a .gguf file, or a type of the embedded model's GGUF "
                 "ladder (f16, q8_0, q6_k, q5_1, q5_0, q4_k_m, q4_1, iq4_nl, q4_0, q3_k, q2_k; built on first use "
                 "with llama.cpp's quantizer). Needs the llamacpp extra.")] = None,
    ) -> None:
        """Start a baseline and a candidate server (vLLM; llama.cpp for --candidate-gguf) until Ctrl-C.

        The servers come from serve.baseline / serve.candidate in servecmp.toml, or else are the
        embedded SmolLM2 pair (built on first use). Logs go to a run directory.
        """
        from rich.console import Console

        from servecmp.config import load_config
        from servecmp.runstore import new_run_dir
        from servecmp.serving.cpu import parse_scheme
        from servecmp.serving.servers import ServerPair

        console = _console()
        cfg = load_config(config)
        scheme = parse_scheme(candidate_scheme)
        servers = resolve_servers(
            cfg.serve, baseline_port=baseline_port, candidate_port=candidate_port, scheme=scheme
        )
        if candidate_gguf is not None:
            from servecmp.serving.gguf import gguf_candidate

            servers["candidate"] = gguf_candidate(candidate_gguf, servers["candidate"])
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

    models = typer.Typer(help="The embedded default model pair (SmolLM2-135M-Instruct and a compressed copy).",
                         no_args_is_help=True)

    @models.command("build")
    def build(
        candidate_scheme: Annotated[
            str | None,
            typer.Option("--candidate-scheme", help=f"The candidate's compression ({SCHEME_HELP}); default w8a8."),
        ] = None,
        scheme: Annotated[str | None, legacy_option("--scheme", "--candidate-scheme")] = None,
    ) -> None:
        """Build (or find in the cache) the baseline and one candidate; print both checkpoint directories.

        Each checkpoint is built once and reused; the baseline is shared by every candidate.
        """
        from rich.console import Console

        from servecmp.serving.cpu import describe_cpu, parse_scheme, read_cpu_flags, scheme_support
        from servecmp.serving.modelpair import ensure_embedded_pair

        parsed = parse_scheme(renamed("--scheme", scheme, "--candidate-scheme", candidate_scheme) or "w8a8")
        pair = ensure_embedded_pair(candidate_scheme=parsed, log=_say)
        flags = read_cpu_flags()
        ok, why = scheme_support(parsed, flags)
        out = Console()
        out.print(f"baseline  {pair.baseline_dir}", highlight=False, soft_wrap=True)
        out.print(f"candidate {pair.candidate_dir}", highlight=False, soft_wrap=True)
        _console().print(
            f"candidate {parsed.name}: {parsed.describe()}; served as {pair.candidate_name}",
            highlight=False,
            soft_wrap=True,
        )
        note = "" if ok else f"; note: {why}"
        _console().print(f"cpu: {describe_cpu(flags)}{note}", highlight=False, soft_wrap=True)

    app.add_typer(models, name="models")
