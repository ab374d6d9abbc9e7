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
- Old flag names (`legacy`, `legacy_option`, read through `renamed`) work for one release: hidden
  from --help, one deprecation line on stderr when used.

Each flag is declared once here (`option`, `switch`) or in its command's module; the groups below
(ENDPOINTS, NOISE_FLOOR, PACING, OUTPUT) are the runs of flags several commands share, and
`with_options` assembles a command's typer signature from them, so a command lists its flags once,
in --help order, and builds its options with `servecmp.options` (`from_flags`).
- `--html FILE`: the report as one self-contained HTML file (servecmp.html), beside the terminal report.
- `--json`: the summary as one JSON object on stdout (progress goes to stderr).
- `-c/--config`: servecmp.toml (default ./servecmp.toml when it exists).
- `--gate EXPR` (repeatable): a rule METRIC<=VALUE or METRIC>=VALUE decided on the metric's 95%
  interval (servecmp.gates); replaces the `[gate]` table's rules for the run kind. `--summary-md FILE`:
  append the verdict as Markdown (a CI job summary). Exit 0 all pass, 1 a gate fails, 4 undecided.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from servecmp.finish import Output



def option(decls: str | tuple[str, ...], kind: Any, help: str, **settings: Any) -> Any:
    """A flag that may be left out: ``Annotated[kind | None, typer.Option(decls, ...)]``, its value
    None when not given (the first of ``decls`` names the parameter: `with_options`)."""
    names = (decls,) if isinstance(decls, str) else decls
    return Annotated[kind | None, typer.Option(*names, help=help, **settings)]


def switch(decls: str | tuple[str, ...], help: str) -> Any:
    """An on/off flag with no "not given" state: ``Annotated[bool, ...]``, off unless given."""
    names = (decls,) if isinstance(decls, str) else decls
    return Annotated[bool, typer.Option(*names, help=help)]


Baseline = option("--baseline", str, "Baseline endpoint URL (http://host:port[/v1]).")
Candidate = option("--candidate", str, "Candidate endpoint URL.")
Secondary = option("--secondary", str, "A second replica of the baseline: measures the noise floor.")
BaselineModel = option("--baseline-model", str, "Model name at the baseline.")
CandidateModel = option("--candidate-model", str, "Model name at the candidate.")
SecondaryModel = option("--secondary-model", str, "Model name at the secondary.")
BaselineKeyEnv = option("--baseline-key-env", str, "Name of the env var holding the baseline's API key.")
CandidateKeyEnv = option("--candidate-key-env", str, "Name of the env var holding the candidate's API key.")
SecondaryKeyEnv = option("--secondary-key-env", str, "Name of the env var holding the secondary's API key.")

#: Several candidates against one baseline (`servecmp mcq`, `gen`, `mtbench`): repeatable, matched by position.
Candidates = option("--candidate", list[str], "Candidate endpoint URL; repeat for several candidates against one "
                    "baseline.", metavar="URL")
CandidateModels = option("--candidate-model", list[str], "Model name at the candidate (repeat: one per --candidate, "
                         "by position).", metavar="MODEL")
CandidateKeyEnvs = option("--candidate-key-env", list[str], "Name of the env var holding the candidate's API key "
                          "(repeat: one per --candidate, by position).", metavar="VAR")
CandidateNames = option("--candidate-name", list[str], "The candidate's name in the report (repeat: one per "
                        "--candidate; default: \"candidate\" for one, else the served model name).", metavar="NAME")
NoiseFloor = option("--noise-floor", int, "After the main pass, ask every endpoint a seeded sample of N items again "
                    "(another order and concurrency): each endpoint's own noise floor.", min=1, metavar="N")


def legacy_option(old: str, new: str) -> Any:
    """A flag's old name, kept for one release and hidden from --help; read it through `renamed`."""
    return typer.Option(old, hidden=True, help=f"Old name of {new}.")


def legacy(old: str, new: str, kind: Any, **settings: Any) -> Any:
    """`option` for an old name (`legacy_option`): None when not given."""
    return Annotated[kind | None, typer.Option(old, hidden=True, help=f"Old name of {new}.", **settings)]


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
Concurrency = option("--concurrency", str, "Requests in flight per endpoint: auto (mcq's default: raised while "
                     "throughput grows at a steady latency, lowered on 429/503/timeouts or queueing) or a fixed "
                     "number.", parser=parse_concurrency, metavar="auto|N")
MaxConcurrency = option("--max-concurrency", int, "With --concurrency auto: never more than N in flight "
                        "(default 256).", min=1, metavar="N")
Rps = option("--rps", float, "Requests per second per endpoint, at most.", min=0.0)
Timeout = option("--timeout", float, "Per-request timeout, seconds.", min=0.0)
Retries = option("--retries", int, "Retries on 429/5xx/timeouts/dropped connections.", min=0)

Limit = option("--limit", int, "Only the first N, in file order.", min=1)
Show = option("--show", int, "How many rows of the report's worst list to show: MCQ subjects (most flips first), "
              "MT-Bench questions (largest drops), generated-answer items (flipped first), shadow requests (most "
              "diverging).", min=0, metavar="N")
Json = switch("--json", "Print the summary as one JSON object on stdout.")
ConfigFile = option(("--config", "-c"), Path, "servecmp.toml (default: ./servecmp.toml when it exists).")
RunsDir = option("--runs-dir", Path, "Where run directories are created.")
Resume = option("--resume", Path, "Finish an interrupted run (its RUN_DIR).")
Gate = option("--gate", list[str], "A rule METRIC<=VALUE or METRIC>=VALUE (e.g. 'flips<=5%'), decided on the 95% "
              "interval; repeatable; replaces [gate] in servecmp.toml. Exit 0 pass, 1 fail, 4 inconclusive.",
              metavar="EXPR")
SummaryMd = option("--summary-md", Path, "Append the verdict as Markdown to FILE (e.g. \"$GITHUB_STEP_SUMMARY\").",
                   metavar="FILE")
Html = option("--html", Path, "Also write the report as one self-contained HTML file (opens offline, plots "
              "embedded).", metavar="FILE")
Api = option("--api", str, "How letter items (MMLU) are asked: completions (top-k at the answer position), chat (the "
             "exemplars as prior turns, top_logprobs of the first token; for chat-only endpoints), or auto "
             "(completions where every endpoint has it, else chat). Continuation tasks need completions.",
             metavar="auto|completions|chat")
TopK = option("--top-k", int, "Top-k logprobs per request (vLLM: <= its --max-logprobs).", min=1)


# --- groups: each command's signature is assembled from these (`with_options`) ---------------------

#: Where a command's own parameters stand among the groups of `with_options` (default: first).
OWN = object()


def flag(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    """A command parameter whose name is not its option's (``as_json`` for ``--json``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _param(item: Any) -> inspect.Parameter:
    """A typer parameter from an ``Annotated[T, typer.Option("--some-flag", ...)]`` alias: named
    ``some_flag``; default None ("not given"), or False for a plain switch (``bool``, no None)."""
    if isinstance(item, inspect.Parameter):
        return item
    base, info = typing.get_args(item)[:2]
    first = info.default if isinstance(info.default, str) else ""
    if not first.startswith("--"):
        raise TypeError(f"{item}: give a parameter name with flag(NAME, ...)")
    name = first.split("/", 1)[0][2:].replace("-", "_")
    return flag(name, item, False if base is bool else None)


def _flatten(parts: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for part in parts:
        out.extend(_flatten(part) if isinstance(part, tuple | list) else [part])
    return out


def with_options(*parts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the flags of ``parts`` (groups: tuples of option aliases or `flag`s, nested
    as needed), in that order, around its own parameters (at `OWN`, else first). The function takes
    them as keywords (``**flags``). Typer reads a command's flags from ``inspect.signature`` and
    ``typing.get_type_hints``, so both are rewritten: --help lists the flags in this order."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        items = _flatten(parts)
        if OWN not in items:
            items.insert(0, OWN)
        params: list[inspect.Parameter] = []
        for item in items:
            params.extend(own if item is OWN else [_param(item)])
        names = [p.name for p in params]
        if len(set(names)) < len(names):
            raise TypeError(f"{func.__name__}: a flag given twice ({names})")
        func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        func.__annotations__ = {**{p.name: p.annotation for p in params}, "return": sig.return_annotation}
        return func

    return apply


def output(flags: dict[str, Any], *, title: str, show: int | None = None) -> Output:
    """The output flags as the finish step reads them (`show` replaces --show's value when given)."""
    from servecmp.finish import Output

    return Output(as_json=flags["as_json"], show=flags["show"] if show is None else show, html=flags["html"],
                  summary_md=flags["summary_md"], title=title)


BaselineRun = option("--baseline-run", Path, "Join a finished run's stored baseline (its answers, and what the "
                     "comparison needs of them) instead of asking the baseline: only the candidates are asked. "
                     "Refused when a setting that decides the baseline's answers differs (items, prompts, API, top-k; "
                     "the run kind's own: few-shot for mcq, max tokens, sampling and teacher forcing for gen).",
                     metavar="RUN_DIR")
BaselineCheck = option("--baseline-check", int, "With --baseline-run and --baseline URL: re-ask N seeded stored items "
                       "of the live baseline and refuse when it no longer reproduces them (default 20).",
                       min=1, metavar="N")
BaselineOnly = option("--baseline-only", bool, "Ask only the baseline: a profile for later --baseline-run.")

ENDPOINTS = (Baseline, Candidates, BaselineModel, CandidateModels, BaselineKeyEnv, CandidateKeyEnvs, CandidateNames)
NOISE_FLOOR = (Secondary, SecondaryModel, SecondaryKeyEnv, NoiseFloor)
PACING = (Concurrency, MaxConcurrency, Rps, Timeout, Retries)
#: A stored baseline instead of asking the baseline (mcq, gen).
STORED_BASELINE = (BaselineRun, BaselineCheck, BaselineOnly)
#: What a run prints, writes and decides (`servecmp.finish.Output` and the gates).
OUTPUT = (Gate, SummaryMd, Html, flag("as_json", Json, False), Show)
