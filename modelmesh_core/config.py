"""Configuration: the attrs schema, one private cattrs converter, interpolation and validation.

``load_config(source, registry)`` takes a YAML path, YAML text or a dict and returns a frozen
:class:`MeshConfig`. Every problem found is collected and raised at once as a
:class:`~modelmesh_core.errors.ConfigError` whose lines read ``path: message``. Each connector's
own ``config:`` is structured into the type its plugin declares (``ProviderSpec.config_type``
…), so after loading ``ConnectorRef.config`` holds that typed object.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NewType

import attrs
import cattrs
import yaml
from attrs import Factory, frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from .errors import ConfigError, did_you_mean
from .quota import cron_error
from .redaction import SecretStr, register_secret

__all__ = [
    "Backoff",
    "BatchConfig",
    "BudgetConfig",
    "ConnectorRef",
    "Duration",
    "MeshConfig",
    "ModelConfig",
    "OnBreak",
    "PoolConfig",
    "ProviderConfig",
    "RetryConfig",
    "StreamingConfig",
    "TimeoutConfig",
    "TracingConfig",
    "TracingExport",
    "load_config",
    "parse_duration",
    "structure_plugin_config",
]

Duration = NewType("Duration", float)
"""Seconds; config accepts numbers or strings such as ``500ms``, ``30s``, ``5m``, ``1h``, ``7d``."""

ByteSize = NewType("ByteSize", int)
"""Bytes; config accepts numbers or strings such as ``512KB``, ``4MB``, ``1GiB``."""

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 10**6,
               "mb": 10**6, "mib": 2**20, "mi": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30,
               "gi": 2**30}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration string; raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h or 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"must be a duration such as 500ms, 30s, 5m, 1h or 7d, not {value!r}")


def parse_size(value: Any) -> int:
    """Bytes from a number or a size string such as ``4MB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    raise ValueError(f"must be a size such as 512KB or 4MB, not {value!r}")


# --------------------------------------------------------------------------- schema


class Backoff(enum.StrEnum):
    """How long to wait before retrying."""

    FIXED = "fixed"
    EXPONENTIAL_JITTER = "exponential_jitter"
    RETRY_AFTER = "retry_after"


class RetryScope(enum.StrEnum):
    """Which candidates a retry may go to."""

    SAME_MODEL = "same_model"
    SAME_PROVIDER = "same_provider"
    ANY = "any"


class OnBudgetExceeded(enum.StrEnum):
    """What an enforced budget does when it would be exceeded."""

    ROTATE = "rotate"
    ERROR = "error"


@frozen(kw_only=True)
class ConnectorRef:
    """``{connector: <id>, config: {...}}``; ``config`` is structured by the plugin's type."""

    connector: str
    config: Any = Factory(dict)


@frozen(kw_only=True)
class RetryConfig:
    """Retry and rotation policy of one request."""

    max_attempts: int = 4
    backoff: Backoff = Backoff.EXPONENTIAL_JITTER
    initial_delay: Duration = Duration(0.05)
    max_delay: Duration = Duration(5.0)
    same_model_retries: int = 0
    retryable_codes: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504)
    non_retryable_codes: tuple[int, ...] = (400, 401, 403, 404, 413, 422)
    rotate_codes: tuple[int, ...] = (401, 403, 404)
    scope: RetryScope = RetryScope.ANY
    honor_retry_after: bool = True
    max_retry_after: Duration = Duration(30.0)
    max_same_model_wait: Duration = Duration(0.0)


class OnBreak(enum.StrEnum):
    """What a stream that breaks after output reached the caller does."""

    CONTINUE = "continue"
    ERROR = "error"


@frozen(kw_only=True)
class StreamingConfig:
    """How a stream that breaks mid-answer is handled (SPEC §3.5, the streaming rule)."""

    on_break: OnBreak = OnBreak.CONTINUE
    max_continuations: int = 3


@frozen(kw_only=True)
class ProviderRetryConfig:
    """How a provider's own transient errors are retried on the same model before the pool's
    policy rotates to another candidate (overrides the pool's values for this provider)."""

    same_model_retries: int = 0
    backoff: Backoff = Backoff.EXPONENTIAL_JITTER
    initial_delay: Duration = Duration(0.05)
    max_delay: Duration = Duration(5.0)


@frozen(kw_only=True)
class TimeoutConfig:
    """Per-attempt timeouts; null disables one."""

    connect: Duration | None = Duration(10.0)
    first_byte: Duration | None = Duration(60.0)
    idle: Duration | None = Duration(30.0)
    total: Duration | None = Duration(600.0)


@frozen(kw_only=True)
class BudgetConfig:
    """Spending limits in USD; null means no limit."""

    per_request: float | None = None
    daily: float | None = None
    monthly: float | None = None
    alert_threshold: float = 0.8
    enforce: bool = True
    on_budget_exceeded: OnBudgetExceeded = OnBudgetExceeded.ROTATE


@frozen(kw_only=True)
class LimitsConfig:
    """Requests / tokens per rolling minute and per day (free-tier quotas).

    ``reset_hour`` is the UTC hour at which the provider's daily quota resets (0: midnight
    UTC); ``free`` marks these quotas as a free tier (spent first by the free-tier strategy).
    """

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None
    monthly_requests: int | None = None
    monthly_tokens: int | None = None
    reset_hour: float = 0.0
    free: bool = False


@frozen(kw_only=True)
class MaintenanceConfig:
    """A provider's recurring maintenance window: from each time ``cron`` (five fields,
    UTC) fires, for ``duration``; its models are skipped meanwhile."""

    cron: str
    duration: Duration


@frozen(kw_only=True)
class PricingConfig:
    """USD per 1M tokens and per request."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    per_request: float = 0.0
    reasoning: float | None = None


@frozen(kw_only=True)
class ProviderConfig:
    """One configured provider: a connector plus what the core applies to every connector."""

    connector: str
    config: Any = Factory(dict)
    enabled: bool = True
    budget: BudgetConfig | None = None
    limits: LimitsConfig | None = None
    timeout: TimeoutConfig | None = None
    retry: ProviderRetryConfig | None = None
    maintenance: tuple[MaintenanceConfig, ...] = ()
    free_tier: bool = False


@frozen(kw_only=True)
class ModelConfig:
    """One model; fields left out come from the provider's catalogue."""

    provider: str | None = None
    upstream_id: str | None = None
    capabilities: tuple[str, ...] | None = None
    delivery_modes: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    pricing: PricingConfig | None = None
    limits: LimitsConfig | None = None
    priority: int = 0
    weight: float = 1.0
    enabled: bool = True


@frozen(kw_only=True)
class PoolConfig:
    """A capability pool: membership, strategy, rotation and retry policy."""

    capability: str | None = None
    models: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    excluded_providers: tuple[str, ...] = ()
    strategy: ConnectorRef = ConnectorRef(connector="modelmesh.stick-until-failure.v1")
    priority: int = 0
    failure_threshold: int = 3
    error_rate_threshold: float | None = None
    error_rate_window: Duration = Duration(60.0)
    error_rate_min_requests: int = 10
    deactivate_on: tuple[int, ...] = ()
    max_requests: int | None = None
    max_tokens: int | None = None
    cooldown: Duration = Duration(60.0)
    retry: RetryConfig | None = None
    streaming: StreamingConfig | None = None
    timeout: TimeoutConfig | None = None
    budget: BudgetConfig | None = None
    description: str = ""


@frozen(kw_only=True)
class StageConfig:
    """Place, replace or disable a pipeline stage by name (``plugins.stages``)."""

    name: str
    connector: str | None = None
    order: int | None = None
    enabled: bool = True
    config: Any = Factory(dict)


@frozen(kw_only=True)
class PluginsConfig:
    """Which plugins load, which must load, and the pipeline layout."""

    entry_points: bool = True
    require: tuple[str, ...] = ()
    block: tuple[str, ...] = ()
    strict: bool | None = None
    stages: tuple[StageConfig, ...] = ()
    filters: tuple[ConnectorRef, ...] | None = None
    middleware: tuple[ConnectorRef, ...] = ()


@frozen(kw_only=True)
class StorageConfig:
    """Where state lives."""

    connector: str = "modelmesh.memory.v1"
    config: Any = Factory(dict)


class RequestLogLevel(enum.StrEnum):
    """How much of each request the request log records."""

    OFF = "off"
    METADATA = "metadata"
    SUMMARY = "summary"
    FULL = "full"


@frozen(kw_only=True)
class RequestLogConfig:
    """The request log: one ``request.log`` event per finished request."""

    level: RequestLogLevel = RequestLogLevel.METADATA
    max_payload_chars: int = 2000


class TracingExport(enum.StrEnum):
    """Where OpenTelemetry spans and metrics go."""

    OTLP = "otlp"
    GLOBAL = "global"


@frozen(kw_only=True)
class TracingConfig:
    """OpenTelemetry traces (and optionally metrics); needs the ``otel`` extra."""

    enabled: bool = False
    export: TracingExport = TracingExport.OTLP
    endpoint: str | None = None
    headers: Mapping[str, str] = Factory(dict)
    service_name: str = "modelmesh"
    metrics: bool = False
    metrics_interval: Duration = Duration(60.0)
    timeout: Duration = Duration(10.0)


@frozen(kw_only=True)
class ObservabilityConfig:
    """Event sinks, the request log and OpenTelemetry tracing."""

    sinks: tuple[ConnectorRef, ...] = ()
    request_log: RequestLogConfig = Factory(RequestLogConfig)
    tracing: TracingConfig = Factory(TracingConfig)


@frozen(kw_only=True)
class DiscoveryConfig:
    """Auto-detection of providers and background discovery connectors."""

    auto_detect: bool | None = None
    probe_on_start: bool = False
    connectors: tuple[ConnectorRef, ...] = ()


@frozen(kw_only=True)
class CapabilitiesConfig:
    """Extra capability nodes and aliases."""

    nodes: tuple[str, ...] = ()
    aliases: Mapping[str, str] = Factory(dict)


@frozen(kw_only=True)
class VirtualKeyConfig:
    """A proxy API key with its own allowed pools, budget and rate limit."""

    key: str
    name: str = ""
    pools: tuple[str, ...] | None = None
    budget: BudgetConfig | None = None
    rpm: int | None = None
    admin: bool = False


@frozen(kw_only=True)
class ProxyAuthConfig:
    """Proxy authentication; no keys means no authentication."""

    keys: tuple[VirtualKeyConfig, ...] = ()
    admin_keys: tuple[str, ...] = ()


@frozen(kw_only=True)
class CorsConfig:
    """Allowed browser origins (``*`` for any)."""

    origins: tuple[str, ...] = ()


@frozen(kw_only=True)
class ProxyLimitsConfig:
    """Request and connection limits of the proxy."""

    max_body_size: ByteSize = ByteSize(4 * 2**20)
    max_upload_size: ByteSize = ByteSize(25 * 2**20)
    max_concurrency: int | None = None
    max_connections: int = 1024
    max_file_size: ByteSize = ByteSize(64 * 2**20)
    max_files_size: ByteSize = ByteSize(512 * 2**20)
    header_timeout: Duration = Duration(15.0)
    body_timeout: Duration = Duration(30.0)


@frozen(kw_only=True)
class ProxyAdminConfig:
    """The admin API: open without a key only when asked, and then only to this machine."""

    open_on_loopback: bool = False
    allowed_hosts: tuple[str, ...] = ()


class MetricsAuth(enum.StrEnum):
    """Who may read ``/metrics``."""

    OPEN = "open"
    KEY = "key"
    ADMIN = "admin"


@frozen(kw_only=True)
class ProxyMetricsConfig:
    """``/metrics``: ``auth`` is who may read it when proxy keys are configured."""

    auth: MetricsAuth = MetricsAuth.KEY


@frozen(kw_only=True)
class ProxyConfig:
    """The OpenAI-compatible HTTP proxy."""

    host: str = "127.0.0.1"
    port: int = 8080
    auth: ProxyAuthConfig = Factory(ProxyAuthConfig)
    cors: CorsConfig = Factory(CorsConfig)
    limits: ProxyLimitsConfig = Factory(ProxyLimitsConfig)
    admin: ProxyAdminConfig = Factory(ProxyAdminConfig)
    metrics: ProxyMetricsConfig = Factory(ProxyMetricsConfig)
    shutdown_timeout: Duration = Duration(30.0)


@frozen(kw_only=True)
class BatchConfig:
    """``batch:``: how ``Router.batch`` runs a batch (provider-native or by the router)."""

    native: bool = True
    poll_interval: Duration = Duration(30.0)
    max_poll_errors: int = 5
    concurrency: int = 8


@frozen(kw_only=True)
class MeshConfig:
    """The whole configuration (every section is documented in docs/config.md)."""

    secrets: ConnectorRef = ConnectorRef(connector="modelmesh.env.v1")
    providers: Mapping[str, ProviderConfig] = Factory(dict)
    models: Mapping[str, ModelConfig] = Factory(dict)
    pools: Mapping[str, PoolConfig] = Factory(dict)
    storage: StorageConfig = Factory(StorageConfig)
    observability: ObservabilityConfig = Factory(ObservabilityConfig)
    discovery: DiscoveryConfig = Factory(DiscoveryConfig)
    budget: BudgetConfig | None = None
    plugins: PluginsConfig = Factory(PluginsConfig)
    proxy: ProxyConfig = Factory(ProxyConfig)
    capabilities: CapabilitiesConfig = Factory(CapabilitiesConfig)
    timeout: TimeoutConfig = Factory(TimeoutConfig)
    retry: RetryConfig = Factory(RetryConfig)
    streaming: StreamingConfig = Factory(StreamingConfig)
    batch: BatchConfig = Factory(BatchConfig)


# --------------------------------------------------------------------------- converter


def _strict(tp: type, name: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and tp is not bool:
            raise ValueError(f"must be {name}, not a boolean")
        if tp is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, tp):
            raise ValueError(f"must be {name}, not {type(value).__name__} {value!r}")
        return value

    return hook


def _enum_hook(value: Any, tp: type[enum.Enum]) -> enum.Enum:
    try:
        return tp(value)
    except ValueError:
        raise ValueError("must be one of " + ", ".join(str(m.value) for m in tp)) from None


def _is_tuple(tp: Any) -> bool:
    return getattr(tp, "__origin__", None) is tuple


def _make_tuple_hook(c: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        inner = c.gen_structure_hetero_tuple(tp) if ... not in tp.__args__ else None
        base = c._structure_tuple  # type: ignore[attr-defined]

        def hook(value: Any, t: Any) -> Any:
            if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple):
                raise ValueError(f"must be a list, not {type(value).__name__}")
            return inner(value, t) if inner is not None else base(value, t)

        return hook

    return factory


def _connector_ref(value: Any, _: Any) -> ConnectorRef:
    if isinstance(value, str):
        return ConnectorRef(connector=value)
    if isinstance(value, Mapping):
        return _BASE_REF(value, ConnectorRef)
    raise ValueError("must be a connector id or {connector: <id>, config: {...}}")


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook(str, _strict(str, "a string"))
    c.register_structure_hook(int, _strict(int, "an integer"))
    c.register_structure_hook(float, _strict(float, "a number"))
    c.register_structure_hook(bool, _strict(bool, "true or false"))
    c.register_structure_hook(Duration, lambda v, _: parse_duration(v))
    c.register_structure_hook(ByteSize, lambda v, _: parse_size(v))
    for enum_type in (Backoff, RetryScope, OnBudgetExceeded, RequestLogLevel, OnBreak,
                      MetricsAuth, TracingExport):
        c.register_structure_hook(enum_type, _enum_hook)
    c.register_structure_hook_factory(_is_tuple, _make_tuple_hook(c))
    return c


_CONVERTER = _make_converter()
_BASE_REF = _CONVERTER.gen_structure_attrs_fromdict(ConnectorRef)
_CONVERTER.register_structure_hook(ConnectorRef, _connector_ref)


def _format_exception(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        parts = []
        for key in sorted(exc.extra_fields):
            parts.append(f"\x00{key}\x01unknown key{did_you_mean(key, known)}")
        return "\x02".join(parts)
    if isinstance(exc, KeyError):
        return "required key is missing"
    if tp is not None and isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "must be one of " + ", ".join(str(m.value) for m in tp)
    if isinstance(exc, ValueError) and str(exc) and not str(exc).startswith("invalid literal"):
        return str(exc)
    if isinstance(exc, TypeError | AttributeError) and tp is not None:
        if isinstance(tp, type) and attrs.has(tp):
            return "must be a mapping"
        return f"invalid value, expected {getattr(tp, '__name__', tp)}"
    return f"invalid value ({exc})"


_NO_ECHO = re.compile(r"^(must be [^,]+, not \w+) .*$", re.S)
_PATH_ITEM = re.compile(r"\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")


def _dotted(path: str, prefix: str) -> str:
    path = path[1:] if path.startswith("$") else path
    path = _PATH_ITEM.sub(lambda m: "." + (m.group(1) or m.group(2) or m.group(3)), path)
    path = path.lstrip(".")
    return ".".join(p for p in (prefix, path) if p)


def structure_errors(exc: BaseException, prefix: str = "") -> list[str]:
    """Turn a cattrs structuring exception into ``path: message`` lines."""
    lines: list[str] = []
    if not isinstance(exc, ClassValidationError | IterableValidationError | ExceptionGroup):
        msg = _format_exception(exc, None)
        return [f"{prefix or '(root)'}: {msg}"]
    for raw in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
        message, _, path = raw.rpartition(" @ ")
        base = _dotted(path, prefix)
        if is_sensitive_path(base):
            message = _NO_ECHO.sub(r"\1", message)  # never repeat a secret's value
        for part in message.split("\x02"):
            if part.startswith("\x00"):
                key, _, msg = part[1:].partition("\x01")
                lines.append(f"{'.'.join(p for p in (base, key) if p)}: {msg}")
            else:
                lines.append(f"{base or '(root)'}: {part}")
    return lines


def structure(data: Any, tp: type, prefix: str = "") -> tuple[Any, list[str]]:
    """Structure ``data`` into ``tp``; return ``(value or None, errors)``."""
    try:
        return _CONVERTER.structure(data, tp), []
    except Exception as exc:
        return None, structure_errors(exc, prefix)


def structure_plugin_config(data: Any, tp: type | None, path: str) -> tuple[Any, list[str]]:
    """Structure a connector's ``config:`` into the type its plugin declares.

    With no declared type the config must be empty (or a mapping passed through when the
    plugin declares ``dict``).
    """
    if tp is None:
        if data in (None, {}):
            return None, []
        return None, [f"{path}: this connector takes no configuration"]
    if tp is dict:
        if not isinstance(data, Mapping):
            return None, [f"{path}: must be a mapping"]
        return dict(data), []
    if data is None:
        data = {}
    if attrs.has(tp) and not isinstance(data, Mapping):
        return None, [f"{path}: must be a mapping"]
    return structure(data, tp, path)


# --------------------------------------------------------------------------- interpolation

_INTERP = re.compile(r"\$\{(env|secrets):([^}]+)\}")
_SENSITIVE = re.compile(
    r"(?:^|_)(?:key|keys|token|tokens|secret|secrets|password|passwd|credentials?)$")


def is_sensitive_path(path: str) -> bool:
    """Whether the last named component of ``path`` (list indexes skipped) names a secret."""
    for part in reversed(path.split(".")):
        if not part.isdigit():
            return bool(_SENSITIVE.search(part.lower()))
    return False


def interpolate(
    data: Any,
    env: Mapping[str, str],
    secret: Callable[[str], str | None],
    errors: list[str],
    path: str = "",
) -> Any:
    """Replace ``${env:NAME}`` and ``${secrets:NAME}`` in every string of ``data``.

    Values that came from a reference are :class:`SecretStr` (masked in repr, redacted from
    logs). A reference that resolves to nothing is an error at its path.
    """
    if isinstance(data, str):
        if "${" not in data:
            if is_sensitive_path(path):
                # A key written literally in the file is still a secret: mask and redact it.
                register_secret(data)
                return SecretStr(data)
            return data
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            kind, name = m.group(1), m.group(2).strip()
            value = env.get(name) if kind == "env" else secret(name)
            if value is None:
                missing.append(f"{kind}:{name}")
                return ""
            return value

        out = _INTERP.sub(sub, data)
        for ref in missing:
            kind, _, name = ref.partition(":")
            where = "environment variable" if kind == "env" else "secret"
            errors.append(f"{path or '(root)'}: {where} {name!r} is not set")
        register_secret(out)
        return SecretStr(out)
    if isinstance(data, Mapping):
        return {
            k: interpolate(v, env, secret, errors, f"{path}.{k}" if path else str(k))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [interpolate(v, env, secret, errors, f"{path}.{i}") for i, v in enumerate(data)]
    return data


# Settings of the built-in secret stores that name things rather than hold secrets: masking
# them would turn "set $MODELMESH_SECRETS_KEY" into "set $***" in the very error that says so.
_PLAIN_SECRET_SETTINGS = frozenset(
    {"path", "prefix", "key_env", "keyring_service", "keyring_backend", "service", "backend"})

def references(data: Any) -> set[str]:
    """Every ``${env:NAME}`` / ``${secrets:NAME}`` in ``data`` (strings anywhere in it), as
    ``"env:NAME"`` / ``"secrets:NAME"``."""
    found: set[str] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "${" in item:
                found.update(f"{m.group(1)}:{m.group(2).strip()}" for m in _INTERP.finditer(item))
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _mask_secret_section(section: Any) -> Any:
    """The ``secrets`` section with every value under ``config`` masked (it may hold keys),
    except the built-in stores' settings that only name a file, a variable or a service."""
    if not isinstance(section, Mapping) or not isinstance(section.get("config"), Mapping):
        return section

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            register_secret(value)
            return SecretStr(value)
        if isinstance(value, Mapping):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    config = {k: v if k in _PLAIN_SECRET_SETTINGS and isinstance(v, str) else mask(v)
              for k, v in section["config"].items()}
    return {**section, "config": config}


def read_source(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Raw config data from a path, YAML text, or a mapping."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _deepcopy(source)
    text: str
    path = Path(source)
    if isinstance(source, os.PathLike) or ("\n" not in str(source) and path.suffix in
                                           {".yaml", ".yml", ".json"}):
        if not path.exists():
            raise ConfigError([f"(file): {path} does not exist"])
        text = path.read_text(encoding="utf-8")
    else:
        text = str(source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError([f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["(root): the configuration must be a mapping"])
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_deepcopy(v) for v in data]
    return data


_NOT_SALVAGED = frozenset(
    {"capability", "capabilities", "models", "config", "connector", "provider"})


def _salvage(entry: Any, tp: type, prefix: str, errors: list[str]) -> Any:
    """The entry without the keys that failed, when what is left still means the same thing.

    This lets later checks (unknown strategy, provider, model …) run on an entry that also
    has a type error elsewhere, so one pass reports everything. Keys that decide what the
    entry is (its capability, models, connector …) are never dropped: their absence would
    only produce follow-on errors.
    """
    if not isinstance(entry, Mapping):
        return None
    bad: set[str] = set()
    for line in errors:
        rest = line[len(prefix):]
        if not rest.startswith("."):
            return None
        key = rest[1:].split(":", 1)[0].split(".", 1)[0]
        if key in _NOT_SALVAGED:
            return None
        bad.add(key)
    out, errs = structure({k: v for k, v in entry.items() if k not in bad}, tp, prefix)
    return None if errs else out


_ENTRY_SECTIONS = {"providers": ProviderConfig, "models": ModelConfig, "pools": PoolConfig}


def structure_sections(
    raw: Mapping[str, Any],
) -> tuple[MeshConfig, list[str], dict[str, set[str]]]:
    """Structure the top level section by section (and providers / models / pools entry by
    entry) so that every problem is found in one pass.

    Returns the config built from everything that structured cleanly, the errors, and the
    names of entries dropped because they were invalid (so that later checks do not report
    references to them as unknown).
    """
    errors: list[str] = []
    broken: dict[str, set[str]] = {}
    fields = {a.name: a for a in attrs.fields(attrs.resolve_types(MeshConfig))}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            errors.append(f"{key}: unknown key{did_you_mean(str(key), fields)}")
            continue
        if value is None:
            continue
        entry_type = _ENTRY_SECTIONS.get(key)
        if entry_type is not None and isinstance(value, Mapping):
            good: dict[str, Any] = {}
            for name, entry in value.items():
                out, errs = structure(entry, entry_type, f"{key}.{name}")
                if errs:
                    errors.extend(errs)
                    out = _salvage(entry, entry_type, f"{key}.{name}", errs)
                    if out is None:
                        broken.setdefault(key, set()).add(str(name))
                        continue
                good[str(name)] = out
            kwargs[key] = good
            continue
        value_out, errs = structure(value, fields[key].type, key)  # type: ignore[arg-type]
        errors.extend(errs)
        if errs:
            # keep what is valid so that its range and semantic checks still run
            value_out = _salvage(value, fields[key].type, key, errs)  # type: ignore[arg-type]
        if value_out is not None:
            kwargs[key] = value_out
    return MeshConfig(**kwargs), errors, broken


# --------------------------------------------------------------------------- value ranges


def _at_least(n: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= n else f"must be at least {n:g}"


def _positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be positive (or null to disable it)"


def _fraction(v: Any) -> str | None:
    return None if v is None or 0 < v <= 1 else "must be in (0, 1]"


def _status_codes(v: Any) -> str | None:
    bad = [c for c in v or () if not 100 <= c <= 599]
    return f"not HTTP status codes: {bad}" if bad else None


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number (0-65535; 0 picks a free one)"


_RANGES: dict[tuple[str, str], Callable[[Any], str | None]] = {
    **{("LimitsConfig", f): _at_least(1) for f in ("rpm", "tpm", "rpd", "tpd",
                                                    "monthly_requests", "monthly_tokens")},
    ("MaintenanceConfig", "cron"): cron_error,
    ("MaintenanceConfig", "duration"): _positive,
    **{("PricingConfig", f): _at_least(0) for f in ("input", "output", "cached_input",
                                                     "per_request", "reasoning")},
    ("LimitsConfig", "reset_hour"): lambda v: None if 0 <= v < 24 else "must be 0 <= hour < 24",
    ("ModelConfig", "weight"): _at_least(0),
    ("ModelConfig", "context_window"): _at_least(1),
    ("ModelConfig", "max_output_tokens"): _at_least(1),
    ("RetryConfig", "max_attempts"): _at_least(1),
    ("RetryConfig", "same_model_retries"): _at_least(0),
    ("ProviderRetryConfig", "same_model_retries"): _at_least(0),
    ("RetryConfig", "retryable_codes"): _status_codes,
    ("RetryConfig", "non_retryable_codes"): _status_codes,
    ("RetryConfig", "rotate_codes"): _status_codes,
    ("StreamingConfig", "max_continuations"): _at_least(0),
    **{("TimeoutConfig", f): _positive for f in ("connect", "first_byte", "idle", "total")},
    **{("BudgetConfig", f): _at_least(0) for f in ("per_request", "daily", "monthly")},
    ("BudgetConfig", "alert_threshold"): _fraction,
    ("PoolConfig", "failure_threshold"): _at_least(1),
    ("PoolConfig", "error_rate_threshold"): _fraction,
    ("PoolConfig", "error_rate_min_requests"): _at_least(1),
    ("PoolConfig", "max_requests"): _at_least(1),
    ("PoolConfig", "max_tokens"): _at_least(1),
    ("PoolConfig", "deactivate_on"): _status_codes,
    ("BatchConfig", "poll_interval"): _positive,
    ("BatchConfig", "max_poll_errors"): _at_least(1),
    ("BatchConfig", "concurrency"): _at_least(1),
    ("ProxyConfig", "port"): _port,
    ("ProxyLimitsConfig", "max_concurrency"): _at_least(1),
    ("ProxyLimitsConfig", "max_body_size"): _at_least(1),
    ("ProxyLimitsConfig", "max_file_size"): _at_least(1),
    ("ProxyLimitsConfig", "max_files_size"): _at_least(1),
    ("ProxyLimitsConfig", "max_upload_size"): _at_least(1),
    ("ProxyLimitsConfig", "max_connections"): _at_least(1),
    ("ProxyLimitsConfig", "header_timeout"): _positive,
    ("ProxyLimitsConfig", "body_timeout"): _positive,
    ("VirtualKeyConfig", "rpm"): _at_least(1),
    ("RequestLogConfig", "max_payload_chars"): _at_least(1),
}


def range_errors(value: Any, path: str = "") -> list[str]:
    """Values that have the right type but make no sense (negative limits, port 70000, an
    initial back-off longer than the maximum …), each as ``path: message``."""
    errors: list[str] = []
    if attrs.has(type(value)):
        cls = type(value).__name__
        for a in attrs.fields(type(value)):
            if a.name == "config" and cls in ("ConnectorRef", "ProviderConfig", "StageConfig",
                                              "StorageConfig"):
                continue  # a connector's own config: validated against the plugin's type
            item = getattr(value, a.name)
            where = f"{path}.{a.name}" if path else a.name
            rule = _RANGES.get((cls, a.name))
            if rule is not None:
                msg = rule(item)
                if msg:
                    errors.append(f"{where}: {msg}")
            errors.extend(range_errors(item, where))
        if cls in ("RetryConfig", "ProviderRetryConfig") and value.initial_delay > value.max_delay:
            errors.append(f"{path + '.' if path else ''}initial_delay: must not exceed "
                          f"max_delay ({value.max_delay:g}s)")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            errors.extend(range_errors(v, f"{path}.{k}"))
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            if attrs.has(type(v)):
                errors.extend(range_errors(v, f"{path}.{i}"))
    return errors


def load_config_collect(
    source: str | os.PathLike[str] | Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    secret_resolver: Callable[[ConnectorRef, list[str]], Callable[[str], str | None]] | None = None,
) -> tuple[MeshConfig, list[str], dict[str, set[str]]]:
    """Like :func:`load_config` but returns ``(config, errors, broken entries)`` instead of
    raising, so that callers can add their own checks to the same error report."""
    raw = read_source(source)
    env = os.environ if env is None else env
    errors: list[str] = []
    secrets_raw = raw.get("secrets")
    lookup: Callable[[str], str | None] = env.get
    if secret_resolver is not None:
        ref, errs = structure(secrets_raw, ConnectorRef, "secrets") if secrets_raw else (
            ConnectorRef(connector="modelmesh.env.v1"), [])
        errors.extend(errs)
        if ref is not None:
            lookup = secret_resolver(ref, errors)
    data = interpolate(
        {k: v for k, v in raw.items() if k != "secrets"}, env, lookup, errors
    )
    if secrets_raw is not None:
        data["secrets"] = _mask_secret_section(secrets_raw)
    config, errs, broken = structure_sections(data)
    errors.extend(errs)
    errors.extend(range_errors(config))
    return config, errors, broken


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig | None,
    *,
    env: Mapping[str, str] | None = None,
    secret_resolver: Callable[[ConnectorRef, list[str]], Callable[[str], str | None]] | None = None,
) -> MeshConfig:
    """Read, interpolate and structure a configuration (plugin-level checks live in the mesh).

    ``secret_resolver(secrets_ref, errors)`` builds the ``${secrets:…}`` lookup from the
    ``secrets`` section; without one, ``${secrets:NAME}`` reads the environment.
    """
    if isinstance(source, MeshConfig):
        return source
    config, errors, _ = load_config_collect(source, env=env, secret_resolver=secret_resolver)
    if errors:
        raise ConfigError(errors)
    return config
