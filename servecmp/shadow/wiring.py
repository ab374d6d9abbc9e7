"""Building the pieces of `shadow serve` and `shadow replay` from the `[shadow]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servecmp.config import ShadowConfig
from servecmp.errors import UserError
from servecmp.shadow.mirror import Comparer
from servecmp.shadow.store import Counters, PairWriter, RunInfo, register_run
from servecmp.shadow.teacher_forcing import TeacherForcer
from servecmp.shadow.upstream import Upstream, api_key_from_env, base_url

#: Settings that name where keys are: not secret themselves, but left out of the database anyway.
SECRET_FIELDS = {"primary_api_key_env", "candidate_api_key_env", "secondary_api_key_env"}


def new_run(cfg: ShadowConfig, *, mode: str) -> RunInfo:
    """Check the endpoint settings (URLs, that key variables are set) and describe the run."""
    if not cfg.primary or not cfg.candidate:
        raise UserError("shadow needs --primary and --candidate URLs (or [shadow] primary/candidate)")
    api_key_from_env(cfg.primary_api_key_env, "primary")
    api_key_from_env(cfg.candidate_api_key_env, "candidate")
    api_key_from_env(cfg.secondary_api_key_env, "secondary")
    return RunInfo(
        mode=mode,
        primary_url=base_url(cfg.primary),
        candidate_url=base_url(cfg.candidate),
        secondary_url=base_url(cfg.secondary) if cfg.secondary else None,
        hash_only=cfg.hash_only,
        sample_rate=cfg.sample_rate,
        settings=cfg.model_dump(exclude=SECRET_FIELDS),
    )


def start_run(cfg: ShadowConfig, *, mode: str) -> RunInfo:
    """`new_run` + record it in the database (which is created if needed)."""
    run = new_run(cfg, mode=mode)
    register_run(Path(cfg.db), run, max_db_mb=cfg.max_db_mb)
    return run


def primary_upstream(cfg: ShadowConfig) -> Upstream:
    assert cfg.primary is not None
    up = Upstream.create("primary", cfg.primary, timeout_s=cfg.primary_timeout_s,
                         api_key_env=cfg.primary_api_key_env)
    # No stricter connect limit than the client's own would be: on a stalled host a 10 s connect
    # can fail through the proxy where the direct call would have waited and succeeded.
    up.connect_timeout_s = cfg.primary_timeout_s
    return up


@dataclass
class ComparisonParts:
    primary: Upstream
    targets: dict[str, Upstream]
    writer: PairWriter
    comparer: Comparer

    async def aclose(self) -> None:
        for up in [self.primary, *self.targets.values()]:
            await up.aclose()


def build_comparison(cfg: ShadowConfig, run: RunInfo, counters: Counters) -> ComparisonParts:
    """The candidate/secondary upstreams, teacher forcing, comparer and database writer of a run."""
    assert cfg.candidate is not None
    primary = primary_upstream(cfg)
    targets = {
        "candidate": Upstream.create(
            "candidate", cfg.candidate, timeout_s=cfg.candidate_timeout_s,
            model=cfg.candidate_model, api_key_env=cfg.candidate_api_key_env,
        )
    }
    if cfg.secondary:
        targets["secondary"] = Upstream.create(
            "secondary", cfg.secondary, timeout_s=cfg.candidate_timeout_s,
            model=cfg.secondary_model, api_key_env=cfg.secondary_api_key_env,
        )
    writer = PairWriter(
        Path(cfg.db), run, counters, max_db_mb=cfg.max_db_mb, queue_size=cfg.writer_queue_size
    )
    teacher = None
    if cfg.teacher_forced:
        teacher = TeacherForcer(
            targets["candidate"], primary, top_k=cfg.top_k,
            max_answer_tokens=cfg.tf_max_tokens, timeout_s=cfg.candidate_timeout_s,
            score_primary=cfg.tf_score_primary,
        )
    comparer = Comparer(
        targets, teacher, run_id=run.run_id, timeout_s=cfg.candidate_timeout_s,
        max_capture_bytes=capture_bytes(cfg),
    )
    return ComparisonParts(primary, targets, writer, comparer)


def capture_bytes(cfg: ShadowConfig) -> int:
    return int(cfg.max_capture_mb * 1024 * 1024)
