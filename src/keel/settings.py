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
    # scaled out (docs/scale-out.md): postgresql://... moves everything durable to
    # PostgreSQL (then `database` is unused); redis://... moves counters, throttles,
    # budgets, locks and the shared cache to Redis. None: the embedded defaults
    database_url: str | None = None
    redis_url: str | None = None
    # Redis keys are named "<redis_prefix>..." (several Keel deployments, one Redis)
    redis_prefix: str = "keel:"
    # when Redis does not answer: budgets and throttles let calls through unchecked
    # (True) or refuse them with 503 limits_unavailable (False, the default: money)
    limits_fail_open: bool = False
    # the cache (docs/caching.md): Redis keys start with cache_prefix; without Redis the
    # in-memory cache is saved to cache_path at shutdown and loaded at start, if set
    cache_prefix: str = "keel:cache:"
    cache_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1 << 20
    event_batch_size: int = 512
    # store the inputs and outputs of calls in events (switch off for sensitive data)
    store_payloads: bool = True
    # when the store fails, events and review items wait in memory (up to buffer_max),
    # then in JSONL files in spill_dir (up to spill_max_bytes; beyond that they are
    # dropped, and counted), and go to the store when it is back. The write-ahead journal
    # (every event appended before its call returns; replayed at start) lives there too.
    # spill_dir default: "<database>.spill" beside SQLite, a temp dir for PostgreSQL
    # (docs/resilience.md)
    spill_dir: Path | None = None
    buffer_max: int = 10_000
    spill_max_bytes: int = 1 << 30
    journal: bool = True
    extra_provider_types: dict[str, str] = field(default_factory=dict)
    # gateway keys; empty: no key needed (bind to 127.0.0.1 then)
    api_keys: frozenset[str] = frozenset()
    # let requests in with no API key anywhere although `host` is not a loopback
    # address (keel serve --insecure-no-auth; docs/access.md)
    insecure_no_auth: bool = False
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

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file the store lives in; None when it is a database server."""
        url = self.database_url
        if url is None:
            return self.database
        return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None

    @property
    def has_store(self) -> bool:
        """Whether there is a store to read (a server database is assumed to be there)."""
        path = self.sqlite_path
        return path is None or path.exists()

    @property
    def store_name(self) -> str:
        """Where the store is, for messages (no password)."""
        import re

        path = self.sqlite_path
        return str(path) if path is not None else re.sub(r"//[^@/]*@", "//", self.database_url or "")

    @property
    def spill_directory(self) -> Path:
        if self.spill_dir is not None:
            return self.spill_dir
        url = self.database_url
        if url and not url.startswith("sqlite:///"):
            import hashlib
            import tempfile

            digest = hashlib.sha256(url.encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / f"keel-spill-{digest}"
        database = Path(url.removeprefix("sqlite:///")) if url else self.database
        return database.with_name(database.name + ".spill")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ) if env is None else env
        base = cls()
        values: dict[str, Any] = {}
        if "KEEL_CONFIG" in env:
            values["config"] = Path(env["KEEL_CONFIG"])
        if "KEEL_DATABASE" in env:
            values["database"] = Path(env["KEEL_DATABASE"])
        if env.get("KEEL_DATABASE_URL"):
            values["database_url"] = env["KEEL_DATABASE_URL"]
        if env.get("KEEL_REDIS_URL"):
            values["redis_url"] = env["KEEL_REDIS_URL"]
        if env.get("KEEL_CACHE_PREFIX"):
            values["cache_prefix"] = env["KEEL_CACHE_PREFIX"]
        if env.get("KEEL_CACHE_PATH"):
            values["cache_path"] = Path(env["KEEL_CACHE_PATH"])
        if env.get("KEEL_REDIS_PREFIX"):
            values["redis_prefix"] = env["KEEL_REDIS_PREFIX"]
        if "KEEL_LIMITS_FAIL" in env:
            mode = env["KEEL_LIMITS_FAIL"].strip().lower()
            if mode not in {"open", "closed"}:
                from keel.errors import ConfigError

                raise ConfigError(f"KEEL_LIMITS_FAIL={mode!r}: use open or closed")
            values["limits_fail_open"] = mode == "open"
        if "KEEL_HOST" in env:
            values["host"] = env["KEEL_HOST"]
        if "KEEL_PORT" in env:
            values["port"] = int(env["KEEL_PORT"])
        if "KEEL_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["KEEL_MAX_BODY_BYTES"])
        if "KEEL_STORE_PAYLOADS" in env:
            values["store_payloads"] = env["KEEL_STORE_PAYLOADS"].lower() not in {"0", "false", "no"}
        if env.get("KEEL_SPILL_DIR"):
            values["spill_dir"] = Path(env["KEEL_SPILL_DIR"])
        if "KEEL_BUFFER_MAX" in env:
            values["buffer_max"] = int(env["KEEL_BUFFER_MAX"])
        if "KEEL_SPILL_MAX_BYTES" in env:
            values["spill_max_bytes"] = int(env["KEEL_SPILL_MAX_BYTES"])
        if "KEEL_JOURNAL" in env:
            values["journal"] = env["KEEL_JOURNAL"].lower() not in {"0", "false", "no"}
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
