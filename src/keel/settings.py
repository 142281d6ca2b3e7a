"""Process settings: where things are and how big they may get. They live on the app
object (:class:`keel.gateway.Keel`), never in module globals. ``from_env`` reads the
``KEEL_*`` variables; the CLI's flags override them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    config: Path = Path("keel.yaml")
    database: Path = Path("keel.db")
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1 << 20
    event_batch_size: int = 512
    # store the inputs and outputs of calls in events (switch off for sensitive data)
    store_payloads: bool = True
    extra_provider_types: dict[str, str] = field(default_factory=dict)
    # gateway keys; empty: no key needed (bind to 127.0.0.1 then)
    api_keys: frozenset[str] = frozenset()
    # where trained versions' files go; default: "artifacts" beside the database
    artifacts: Path | None = None
    # how often a running Keel picks up control-plane changes made elsewhere (alias
    # moves, new versions, rollout steps, thresholds) and the leader ticks the rollout
    # controller; 0 switches the loop off
    control_interval_s: float = 1.0
    # Prometheus metrics of every call, served at /metrics (docs/observability.md)
    metrics: bool = True
    # how long /metrics reuses the SLO gauges it computed from the store
    slo_cache_s: float = 15.0
    # OpenTelemetry trace exporters: "otlp" and/or "console"; empty: no traces (and
    # opentelemetry is never imported). from_env reads KEEL_TRACES_EXPORTER, else
    # OTEL_TRACES_EXPORTER, else "otlp" when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set
    traces_exporters: tuple[str, ...] = ()

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts or self.database.parent / "artifacts"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ) if env is None else env
        base = cls()
        values: dict[str, Any] = {}
        if "KEEL_CONFIG" in env:
            values["config"] = Path(env["KEEL_CONFIG"])
        if "KEEL_DATABASE" in env:
            values["database"] = Path(env["KEEL_DATABASE"])
        if "KEEL_HOST" in env:
            values["host"] = env["KEEL_HOST"]
        if "KEEL_PORT" in env:
            values["port"] = int(env["KEEL_PORT"])
        if "KEEL_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["KEEL_MAX_BODY_BYTES"])
        if "KEEL_STORE_PAYLOADS" in env:
            values["store_payloads"] = env["KEEL_STORE_PAYLOADS"].lower() not in {"0", "false", "no"}
        if "KEEL_ARTIFACTS" in env:
            values["artifacts"] = Path(env["KEEL_ARTIFACTS"])
        if "KEEL_CONTROL_INTERVAL_S" in env:
            values["control_interval_s"] = float(env["KEEL_CONTROL_INTERVAL_S"])
        if env.get("KEEL_API_KEYS"):
            values["api_keys"] = frozenset(k.strip() for k in env["KEEL_API_KEYS"].split(",") if k.strip())
        if "KEEL_METRICS" in env:
            values["metrics"] = env["KEEL_METRICS"].lower() not in {"0", "false", "no"}
        if "KEEL_SLO_CACHE_S" in env:
            values["slo_cache_s"] = float(env["KEEL_SLO_CACHE_S"])
        values["traces_exporters"] = traces_exporters(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(base, **values)


TRACES_EXPORTERS = ("otlp", "console")


def traces_exporters(env: dict[str, str]) -> tuple[str, ...]:
    """The trace exporters the environment asks for, OpenTelemetry's variables included."""
    from keel.errors import ConfigError

    raw = env.get("KEEL_TRACES_EXPORTER") or env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ("otlp",) if endpoint else ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in (*TRACES_EXPORTERS, "none")]
    if unknown:
        raise ConfigError(f"traces exporter {', '.join(unknown)} is not supported "
                          f"(use {', '.join(TRACES_EXPORTERS)} or none)")
    return () if "none" in names else names
