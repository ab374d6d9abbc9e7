"""Options shared by several commands: one concept, one flag, one help text, everywhere.

Every option defaults to None ("not given"), so a command can tell a flag from servecmp.toml's
value and from its own default, and `--resume` can refuse flags that would change a result.

Meaning, across commands:
- `--baseline/--candidate/--secondary URL`: the endpoints (shadow also accepts `--primary` for
  `--baseline`); `--<role>-model`, `--<role>-key-env` (the *name* of the variable holding the key).
- `--concurrency` (auto or N; `--max-concurrency` caps auto), `--rps`, `--timeout`, `--retries`: how
  servecmp paces its own requests to an endpoint (shadow replay's send rate is `--send-rps`, a
  different concept).
- `--limit N`: the first N items/questions/requests, in file order. `--sample N` (mcq): a seeded
  random sample of N items.
- `--show N`: how many rows of a report's worst list it shows (MCQ subjects by flips, MT-Bench
  questions by drop, shadow requests by divergence).
- Old flag names (`legacy_option`, read through `renamed`) work for one release: hidden from
  --help, one deprecation line on stderr when used.
- `--html FILE`: the report as one self-contained HTML file (servecmp.html), beside the terminal report.
- `--json`: the summary as one JSON object on stdout (progress goes to stderr).
- `-c/--config`: servecmp.toml (default ./servecmp.toml when it exists).
- `--gate EXPR` (repeatable): a rule METRIC<=VALUE or METRIC>=VALUE decided on the metric's 95%
  interval (servecmp.gates); replaces the `[gate]` table's rules for the run kind. `--summary-md FILE`:
  append the verdict as Markdown (a CI job summary). Exit 0 all pass, 1 a gate fails, 4 undecided.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from servecmp.gates import Gate as GateRule

Baseline = Annotated[str | None, typer.Option("--baseline", help="Baseline endpoint URL (http://host:port[/v1]).")]
Candidate = Annotated[str | None, typer.Option("--candidate", help="Candidate endpoint URL.")]
Secondary = Annotated[
    str | None, typer.Option("--secondary", help="A second replica of the baseline: measures the noise floor.")
]
BaselineModel = Annotated[str | None, typer.Option("--baseline-model", help="Model name at the baseline.")]
CandidateModel = Annotated[str | None, typer.Option("--candidate-model", help="Model name at the candidate.")]
SecondaryModel = Annotated[str | None, typer.Option("--secondary-model", help="Model name at the secondary.")]
BaselineKeyEnv = Annotated[
    str | None, typer.Option("--baseline-key-env", help="Name of the env var holding the baseline's API key.")
]
CandidateKeyEnv = Annotated[
    str | None, typer.Option("--candidate-key-env", help="Name of the env var holding the candidate's API key.")
]
SecondaryKeyEnv = Annotated[
    str | None, typer.Option("--secondary-key-env", help="Name of the env var holding the secondary's API key.")
]

#: Several candidates against one baseline (`servecmp mcq`): repeatable, matched by position.
Candidates = Annotated[list[str] | None, typer.Option(
    "--candidate", metavar="URL",
    help="Candidate endpoint URL; repeat for several candidates against one baseline.")]
CandidateModels = Annotated[list[str] | None, typer.Option(
    "--candidate-model", metavar="MODEL",
    help="Model name at the candidate (repeat: one per --candidate, by position).")]
CandidateKeyEnvs = Annotated[list[str] | None, typer.Option(
    "--candidate-key-env", metavar="VAR",
    help="Name of the env var holding the candidate's API key (repeat: one per --candidate, by position).")]
CandidateNames = Annotated[list[str] | None, typer.Option(
    "--candidate-name", metavar="NAME",
    help="The candidate's name in the report (repeat: one per --candidate; default: \"candidate\" for one, "
         "else the served model name).")]
NoiseFloor = Annotated[int | None, typer.Option(
    "--noise-floor", min=1, metavar="N",
    help="After the main pass, ask every endpoint a seeded sample of N items again (another order and "
         "concurrency): each endpoint's own noise floor.")]



def legacy_option(old: str, new: str) -> Any:
    """A flag's old name, kept for one release and hidden from --help; read it through `renamed`."""
    return typer.Option(old, hidden=True, help=f"Old name of {new}.")


def deprecated(old: str, new: str) -> None:
    """The one-line note an old flag or form gets (it still works, for one release)."""
    typer.echo(f"servecmp: {old} is deprecated; use {new}", err=True)


def renamed(old_name: str, old: Any, new_name: str, new: Any) -> Any:
    """The value of a renamed flag: the new one's, else the old one's (with the note); both and
    different is one line, exit 2."""
    if old is None:
        return new
    deprecated(old_name, new_name)
    if new is not None and new != old:
        from servecmp.errors import UserError

        raise UserError(f"{new_name} {new} and {old_name} {old} disagree ({old_name} is the old name of {new_name})")
    return old


def parse_concurrency(value: str | int) -> int | str:
    """`--concurrency`: "auto" or a positive whole number (one-line usage error otherwise)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise typer.BadParameter(f"{value!r} is neither auto nor a whole number >= 1")
    return int(text)


# Typed `str | None` for typer; the value is "auto" or an int (`parse_concurrency`).
Concurrency = Annotated[str | None, typer.Option(
    "--concurrency", parser=parse_concurrency, metavar="auto|N",
    help="Requests in flight per endpoint: auto (mcq's default: raised while throughput grows at a steady "
         "latency, lowered on 429/503/timeouts or queueing) or a fixed number.")]
MaxConcurrency = Annotated[int | None, typer.Option(
    "--max-concurrency", min=1, metavar="N",
    help="With --concurrency auto: never more than N in flight (default 256).")]
Rps = Annotated[float | None, typer.Option("--rps", min=0.0, help="Requests per second per endpoint, at most.")]
Timeout = Annotated[float | None, typer.Option("--timeout", min=0.0, help="Per-request timeout, seconds.")]
Retries = Annotated[
    int | None, typer.Option("--retries", min=0, help="Retries on 429/5xx/timeouts/dropped connections.")
]

Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N, in file order.")]
Show = Annotated[int | None, typer.Option(
    "--show", min=0, metavar="N",
    help="How many rows of the report's worst list to show: MCQ subjects (most flips first), MT-Bench questions "
         "(largest drops), generated-answer items (flipped first), shadow requests (most diverging).")]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="servecmp.toml (default: ./servecmp.toml when it exists).")
]
RunsDir = Annotated[Path | None, typer.Option("--runs-dir", help="Where run directories are created.")]
Resume = Annotated[Path | None, typer.Option("--resume", help="Finish an interrupted run (its RUN_DIR).")]
Gate = Annotated[
    list[str] | None,
    typer.Option("--gate", metavar="EXPR",
                 help="A rule METRIC<=VALUE or METRIC>=VALUE (e.g. 'flips<=5%'), decided on the 95% interval; "
                      "repeatable; replaces [gate] in servecmp.toml. Exit 0 pass, 1 fail, 4 inconclusive."),
]
SummaryMd = Annotated[
    Path | None,
    typer.Option("--summary-md", metavar="FILE",
                 help="Append the verdict as Markdown to FILE (e.g. \"$GITHUB_STEP_SUMMARY\")."),
]
Html = Annotated[
    Path | None,
    typer.Option("--html", metavar="FILE",
                 help="Also write the report as one self-contained HTML file (opens offline, plots embedded)."),
]
Api = Annotated[str | None, typer.Option(
    "--api", metavar="auto|completions|chat",
    help="How letter items (MMLU) are asked: completions (top-k at the answer position), chat (the exemplars "
         "as prior turns, top_logprobs of the first token; for chat-only endpoints), or auto (completions where "
         "every endpoint has it, else chat). Continuation tasks need completions.")]
TopK = Annotated[
    int | None, typer.Option("--top-k", min=1, help="Top-k logprobs per request (vLLM: <= its --max-logprobs).")
]


def print_and_decide(kind: str, summary: Any, gates: Sequence[GateRule], *, as_json: bool, render: Callable[[], None],
                     console: Console, summary_md: Path | None, candidate: str | None, title: str) -> int:
    """The end of a one-candidate report (MT-Bench, shadow): the summary as JSON on stdout (with a
    ``verdict`` key when gates apply) or ``render()``; then the verdict block on ``console`` and the
    Markdown. Returns the verdict's exit code, 0 without gates and --summary-md."""
    from servecmp.verdicts import emit_verdict, verdict_for, wants_verdict, with_verdict

    verdict = verdict_for(kind, summary, gates, candidate=candidate) if wants_verdict(gates, summary_md) else None
    if as_json:
        typer.echo(json.dumps(with_verdict(summary.model_dump(mode="json"), verdict), indent=2, ensure_ascii=False))
    else:
        render()
    if verdict is None:
        return 0
    return emit_verdict(verdict, console=console, summary_md=summary_md, title=title)
