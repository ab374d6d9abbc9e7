"""The flag groups several run kinds share, as typed options: one field list per concept.

A run kind's options (`McqOptions`, `GenOptions`, `MtBenchOptions`) inherit the groups it offers
and add its own fields. Every field is None when its flag was not given, so a kind can tell a flag
from servecmp.toml's value and from its own default, and `--resume` can refuse the flags that would
change a result.

A lower layer: the command line (`servecmp._cli.common`) builds these from parsed flags
(`FlagOptions.from_flags`); the settings modules of the kinds read them. Nothing here knows a
feature package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

from servecmp.errors import UserError

#: Every flag that decides a run's results, by option field, in the order a refusal names them. A
#: resumed run takes these from its manifest, so `--resume` refuses any of them given, whatever its
#: value (`FlagOptions.fixed_on_resume`); the flags a kind has are the fields its options have. One
#: table for every kind: a concept has one flag.
RESULT_FLAGS: dict[str, str] = {
    "questions": "--questions", "references": "--references", "categories": "--categories",
    "max_tokens": "--max-tokens",
    "baseline": "--baseline", "baseline_model": "--baseline-model", "baseline_key_env": "--baseline-key-env",
    "candidate": "--candidate", "candidate_model": "--candidate-model", "candidate_key_env": "--candidate-key-env",
    "candidate_name": "--candidate-name", "secondary": "--secondary", "secondary_model": "--secondary-model",
    "secondary_key_env": "--secondary-key-env", "noise_floor": "--noise-floor", "task": "--task",
    "data_dir": "--data-dir", "source": "--source", "fewshot": "--fewshot", "fewshot_file": "--fewshot-file",
    "limit": "--limit", "sample": "--sample", "seed": "--seed", "top_k": "--top-k", "api": "--api",
    "samples": "--samples", "temperature": "--temperature",
    "teacher_forcing": "--teacher-forcing/--no-teacher-forcing",
    "judge_url": "--judge-url", "judge_model": "--judge-model", "judge_key_env": "--judge-key-env",
    "judge_force_format": "--judge-force-format", "runs_dir": "--runs-dir", "config": "-c/--config",
    "until_decided": "--until-decided", "batch": "--batch", "budget": "--budget",
    "baseline_run": "--baseline-run", "baseline_check": "--baseline-check", "baseline_only": "--baseline-only",
}  # fmt: skip


@dataclass
class FlagOptions:
    """Options read from flags; None means "not given"."""

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> Self:
        """The options among ``flags`` (a command's parsed flags, by parameter name) that this class
        has; the others belong to the command. A repeatable flag given no time arrives as an empty
        list: that is "not given" too."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: None if v == [] else v for k, v in flags.items() if k in names})

    def fixed_on_resume(self, *, accepted: tuple[str, ...] = ()) -> list[str]:
        """The given flags `--resume` refuses (`RESULT_FLAGS` this class has, less the fields in
        ``accepted``: a kind that reads one of them on resume), in the table's order."""
        names = {f.name for f in fields(self)} - set(accepted)
        return [flag for name, flag in RESULT_FLAGS.items() if name in names and getattr(self, name) not in (None, [])]

    def given(self) -> list[str]:
        """The flags given, as `--flag-name`, in field order (for a one-line refusal)."""
        return [f"--{f.name.replace('_', '-')}" for f in fields(self) if getattr(self, f.name) not in (None, [])]


@dataclass
class EndpointOptions(FlagOptions):
    """The baseline and the candidates (repeatable, matched by position; a single string is one)."""

    baseline: str | None = None
    candidate: list[str] | str | None = None
    baseline_model: str | None = None
    candidate_model: list[str] | str | None = None
    baseline_key_env: str | None = None
    candidate_key_env: list[str] | str | None = None
    candidate_name: list[str] | str | None = None


@dataclass
class NoiseFloorOptions(FlagOptions):
    """A second replica of the baseline, and the seeded sample every endpoint is asked again."""

    secondary: str | None = None
    secondary_model: str | None = None
    secondary_key_env: str | None = None
    noise_floor: int | None = None


@dataclass
class PacingOptions(FlagOptions):
    """How servecmp paces its own requests to each endpoint."""

    #: A number or "auto" (servecmp.concurrency).
    concurrency: int | str | None = None
    #: The cap of "auto" (`--max-concurrency`).
    max_concurrency: int | None = None
    rps: float | None = None
    timeout: float | None = None
    retries: int | None = None

    def endpoint_pacing(self) -> dict[str, Any]:
        """The pacing flags as `EndpointSpec` fields (None: not given, `endpoint_from` keeps the section's)."""
        return {"max_concurrency": self.concurrency, "concurrency_cap": self.max_concurrency,
                "requests_per_second": self.rps, "timeout_s": self.timeout, "max_retries": self.retries}

    def given_pacing(self) -> dict[str, Any]:
        """Only the pacing flags given: what a resumed run applies over its manifest's endpoints."""
        return {k: v for k, v in self.endpoint_pacing().items() if v is not None}


@dataclass
class RunOptions(FlagOptions):
    """Where the run goes, which run to resume, the config file, and how many items."""

    runs_dir: Path | None = None
    resume: Path | None = None
    config: Path | None = None
    #: The first N items/questions, in file order.
    limit: int | None = None


@dataclass
class TaskOptions(FlagOptions):
    """Which items a task-based run asks, and how (MCQ and generated answers alike)."""

    task: str | None = None
    data_dir: str | None = None
    source: str | None = None
    fewshot: int | None = None
    #: A seeded random sample of N items (`--seed`).
    sample: int | None = None
    seed: int | None = None
    #: "auto", "completions" or "chat": the API items are asked through.
    api: str | None = None
    top_k: int | None = None


# Bases listed last come first among a dataclass's fields: the fields read endpoints, noise floor,
# pacing, run, task, then a kind's own (the order a refusal names the given flags in).
@dataclass
class TaskRunOptions(TaskOptions, RunOptions, PacingOptions, NoiseFloorOptions, EndpointOptions):
    """The flags a run over a task's items offers (MCQ, generated answers): every group above."""


@dataclass
class StoredBaselineOptions(FlagOptions):
    """--baseline-run, --baseline-check, --baseline-only: a stored baseline instead of asking one."""

    baseline_run: Path | None = None
    baseline_check: int | None = None
    baseline_only: bool | None = None


@dataclass
class StoredRunOptions(StoredBaselineOptions, TaskRunOptions):
    """A run over a task's items that can join a stored baseline (MCQ, generated answers)."""

    def check_stored_flags(self, **not_with_profile: bool) -> bool:
        """UserError (one line) for stored-baseline flags that do not go together; whether a live
        baseline is given (to re-check a stored one). ``not_with_profile``: a kind's own flags that
        a --baseline-only profile refuses, by flag name, e.g. ``{"--until-decided": True}``."""
        live = self.baseline is not None
        if self.baseline_only and (self.candidate or self.baseline_run is not None or any(not_with_profile.values())):
            drop = ["--candidate", "--baseline-run", *not_with_profile]
            raise UserError(f"--baseline-only asks the baseline alone: drop {', '.join(drop[:-1])} and {drop[-1]}")
        if self.baseline_run is None:
            if self.baseline_check is not None:
                raise UserError("--baseline-check re-checks a stored baseline: it needs --baseline-run RUN_DIR")
            return live
        if self.baseline_check is not None and not live:
            raise UserError("--baseline-check needs the live baseline to ask: give --baseline URL as well")
        if self.secondary is not None or self.noise_floor:
            raise UserError("--baseline-run joins stored baseline records: a noise floor (--secondary, "
                            "--noise-floor) needs the live baseline in a joint run")
        return live
