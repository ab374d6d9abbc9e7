"""Building the pieces of `shadow serve`, `shadow collect` and `shadow replay` from the `[shadow]`
settings and the endpoints (`[baseline]` = the primary, `[candidate]`, `[secondary]`, as for every
command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from servecmp.config import ShadowConfig
from servecmp.endpoints import EndpointSpec, api_key_from_env
from servecmp.shadow.mirror import Comparer
from servecmp.shadow.prom import ShadowCollector, Telemetry
from servecmp.shadow.store import Counters, PairWriter, RunInfo, redact_target, redact_url, register_run
from servecmp.shadow.teacher_forcing import TeacherForcer
from servecmp.shadow.upstream import Upstream


@dataclass(frozen=True)
class ShadowEndpoints:
    """The endpoints of a shadow run. Plain data (pickled to the mirror process); keys are named by
    their environment variables, so nothing here is secret."""

    #: The primary: clients get its answers, unchanged.
    baseline: EndpointSpec
    candidate: EndpointSpec
    #: A second replica of the baseline: the noise floor.
    secondary: EndpointSpec | None = None

    @classmethod
    def of(
        cls, baseline: str, candidate: str, secondary: str | None = None, **candidate_fields: Any
    ) -> ShadowEndpoints:
        """Shorthand for URLs (tests, scripts); ``candidate_fields`` are more `EndpointSpec` fields."""
        return cls(
            EndpointSpec(base_url=baseline),
            EndpointSpec(base_url=candidate, **candidate_fields),
            EndpointSpec(base_url=secondary) if secondary else None,
        )

    def roles(self) -> dict[str, EndpointSpec]:
        out = {"baseline": self.baseline, "candidate": self.candidate}
        if self.secondary is not None:
            out["secondary"] = self.secondary
        return out


def new_run(cfg: ShadowConfig, endpoints: ShadowEndpoints, *, mode: str) -> RunInfo:
    """Check that the named key variables are set and describe the run."""
    for role, spec in endpoints.roles().items():
        api_key_from_env(spec.api_key_env, role)
    settings: dict[str, Any] = cfg.model_dump()
    settings["db"] = redact_target(cfg.db)  # a PostgreSQL URL's password stays out of the database
    # Model names are worth knowing when reading the report; key variable names are left out of the
    # database (not secret themselves, but nothing a report needs).
    settings.update({f"{role}_model": spec.model for role, spec in endpoints.roles().items()})
    return RunInfo(
        mode=mode,
        # A URL's user:password@ never reaches the database (nor the reports that read it).
        primary_url=redact_url(endpoints.baseline.base_url),
        candidate_url=redact_url(endpoints.candidate.base_url),
        secondary_url=redact_url(endpoints.secondary.base_url) if endpoints.secondary else None,
        hash_only=cfg.hash_only,
        sample_rate=cfg.sample_rate,
        settings=settings,
    )


def start_run(cfg: ShadowConfig, endpoints: ShadowEndpoints, *, mode: str) -> RunInfo:
    """`new_run` + record it in the database (which is created if needed)."""
    run = new_run(cfg, endpoints, mode=mode)
    register_run(cfg.db, run, max_db_mb=cfg.max_db_mb)
    return run


def primary_upstream(cfg: ShadowConfig, endpoints: ShadowEndpoints) -> Upstream:
    up = Upstream.create("primary", endpoints.baseline, timeout_s=cfg.primary_timeout_s)
    # No stricter connect limit than the client's own would be: on a stalled host a 10 s connect
    # can fail through the proxy where the direct call would have waited and succeeded.
    up.connect_timeout_s = cfg.primary_timeout_s
    up.max_connections = cfg.max_upstream_connections
    return up


@dataclass
class ComparisonParts:
    primary: Upstream
    targets: dict[str, Upstream]
    writer: PairWriter
    comparer: Comparer
    #: Where comparisons report their measures for /metrics (shared with the proxy in process mode).
    telemetry: Telemetry = field(default_factory=Telemetry)

    async def aclose(self) -> None:
        for up in [self.primary, *self.targets.values()]:
            await up.aclose()


def build_comparison(
    cfg: ShadowConfig, endpoints: ShadowEndpoints, run: RunInfo, counters: Counters,
    telemetry: Telemetry | None = None,
) -> ComparisonParts:
    """The candidate/secondary upstreams, teacher forcing, comparer and database writer of a run."""
    primary = primary_upstream(cfg, endpoints)
    targets = {"candidate": Upstream.create("candidate", endpoints.candidate, timeout_s=cfg.candidate_timeout_s)}
    if endpoints.secondary is not None:
        targets["secondary"] = Upstream.create("secondary", endpoints.secondary, timeout_s=cfg.candidate_timeout_s)
    writer = PairWriter(
        cfg.db, run, counters, max_db_mb=cfg.max_db_mb, queue_size=cfg.writer_queue_size
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
    return ComparisonParts(primary, targets, writer, comparer, telemetry or Telemetry())


def capture_bytes(cfg: ShadowConfig) -> int:
    return int(cfg.max_capture_mb * 1024 * 1024)


def model_label(spec: EndpointSpec) -> str:
    """An endpoint's model for metric labels: the configured name, else its URL (no credentials)."""
    return spec.model or redact_url(spec.base_url)


def limits_of(cfg: ShadowConfig) -> dict[str, float]:
    """The bounds /metrics shows (servecmp_shadow_limit{limit=...}), in bytes, counts and seconds."""
    mib = 1024 * 1024
    return {
        "max_body_bytes": cfg.max_body_mb * mib, "queue_bytes": cfg.queue_mb * mib, "queue_jobs": cfg.queue_size,
        "max_connections": cfg.max_connections, "max_upstream_connections": cfg.max_upstream_connections,
        "header_timeout_seconds": cfg.header_timeout_s, "body_timeout_seconds": cfg.body_timeout_s,
        "keepalive_seconds": cfg.keepalive_s, "max_capture_bytes": cfg.max_capture_mb * mib,
    }


def metrics_collector(endpoints: ShadowEndpoints, run: RunInfo, counters: Counters,
                      telemetry: Telemetry, cfg: ShadowConfig | None = None) -> ShadowCollector:
    return ShadowCollector(counters, telemetry, baseline_model=model_label(endpoints.baseline),
                           candidate_model=model_label(endpoints.candidate), run_id=run.run_id, mode=run.mode,
                           limits=limits_of(cfg) if cfg is not None else None)
