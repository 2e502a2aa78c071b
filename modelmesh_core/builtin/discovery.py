"""Built-in discovery connectors: the health monitor and registry sync.

``modelmesh.health-monitor.v1`` probes, in the background, what is out of service and due
for its half-open trial — downed providers and standby models whose cooldown has expired — so
a provider or model that came back returns to service without waiting for live traffic to
risk a request on it. ``modelmesh.registry-sync.v1`` asks each provider for its model list
and adds newly available upstream models to the pools that cover their capabilities.

Both are enabled by naming them in ``discovery.connectors``; each runs one asyncio task
between ``start()`` and ``stop()`` and never touches the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import Factory, frozen

from .._log import logger
from ..config import Duration, PoolConfig, RetryConfig, RetryScope
from ..errors import AuthenticationError, ConfigError, ProviderError
from ..events import EventType
from ..hookspecs import hookimpl
from ..operations import serving_operations
from ..pools import CapabilityPool
from ..rotation import RotationManager
from ..state import ACTIVE
from ..types import (
    CompletionRequest,
    DiscoverySpec,
    EmbeddingRequest,
    Model,
    ModelInfo,
    Provider,
    Timeouts,
)
from .strategies import StickUntilFailure

if TYPE_CHECKING:
    from ..pools import Services

__all__ = [
    "HealthMonitor",
    "HealthMonitorConfig",
    "ProbeResult",
    "RegistrySync",
    "RegistrySyncConfig",
    "SyncRule",
    "modelmesh_discovery",
]

_PROBE_KINDS = ("list_models", "completion")
_PROVIDER_DOWN_DEFAULT = 60.0


def _jittered(interval: float, jitter: float, rng: random.Random) -> float:
    return max(interval * (1.0 + rng.uniform(-jitter, jitter)), 0.0)


class _Periodic:
    """One background task running ``self.run_once()`` every ``interval`` ± ``jitter``."""

    _interval: float
    _jitter: float
    _initial: bool
    _rng: random.Random

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    async def start(self) -> None:
        """Launch the background task and return."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        if not self._initial:
            await asyncio.sleep(_jittered(self._interval, self._jitter, self._rng))
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one round must not end the monitor
                logger.warning("{} round failed: {}", type(self).__name__, exc)
            await asyncio.sleep(_jittered(self._interval, self._jitter, self._rng))


# --------------------------------------------------------------------------- health monitor


@frozen(kw_only=True)
class HealthMonitorConfig:
    """Config of ``modelmesh.health-monitor.v1``.

    ``interval`` between rounds (± ``jitter``, a fraction); at most ``concurrency`` probes in
    flight; each probe times out after ``timeout``. ``provider_probe`` is the request that
    probes a downed provider: ``list_models`` (free, checks the key too) or ``completion``
    (a 1-token chat completion to its first model); ``provider_probes`` overrides it per
    connector id or provider name. Standby models are probed with a 1-token completion
    (embedding models with a one-word embedding).
    """

    interval: Duration = Duration(30.0)
    jitter: float = 0.2
    concurrency: int = 4
    timeout: Duration = Duration(10.0)
    provider_probe: str = "list_models"
    provider_probes: dict[str, str] = Factory(dict)

    def __attrs_post_init__(self) -> None:
        errors = []
        if self.interval <= 0:
            errors.append("interval: must be positive")
        if not 0 <= self.jitter < 1:
            errors.append("jitter: must be at least 0 and below 1")
        if self.concurrency < 1:
            errors.append("concurrency: must be at least 1")
        for key, kind in (("provider_probe", self.provider_probe),
                          *((f"provider_probes.{k}", v) for k, v in self.provider_probes.items())):
            if kind not in _PROBE_KINDS:
                errors.append(f"{key}: must be one of {', '.join(_PROBE_KINDS)}")
        if errors:
            raise ConfigError([f"config.{e}" for e in errors])


@frozen(kw_only=True)
class ProbeResult:
    """One probe: ``target`` is a provider name or a model id; ``kind`` provider / model."""

    kind: str
    target: str
    ok: bool
    error: str | None = None


_PING = CompletionRequest(messages=[{"role": "user", "content": "ping"}], max_tokens=1)
_PING_EMBED = EmbeddingRequest(input=["ping"])


class HealthMonitor(_Periodic):
    """Half-open probes of downed providers and standby models (``modelmesh.health-monitor.v1``).

    Each round looks for work that is *due*: a downed provider whose cooldown has expired, a
    standby model whose cooldown has expired (manual standby and request / token limits,
    which wait for ``reactivate``, are left alone), in both cases with no recovery trial in
    flight. A probe takes that trial (so live traffic does not send a second one at the same
    moment) and sends one cheap request:

    * success — the provider is available again (``provider.up``), the model active again
      (``model.recovered``);
    * failure — back out of service for as long as before; a rejected key keeps the provider
      down as ``authentication_rejected``.

    Probes do not count as requests in the state counters (they are not traffic). A model is
    probed only once its provider is available.
    """

    def __init__(self, config: HealthMonitorConfig | None, services: Services) -> None:
        super().__init__()
        cfg = config or HealthMonitorConfig()
        self.config = cfg
        self._services = services
        self._interval = cfg.interval
        self._jitter = cfg.jitter
        self._initial = False  # the first round one interval after start
        self._rng = services.rng
        self._rotation = RotationManager(services.state, services.events, services.clock)
        self._timeouts = Timeouts(connect=cfg.timeout, first_byte=cfg.timeout,
                                  idle=cfg.timeout, total=cfg.timeout)
        self.rounds = 0

    def _provider_probe(self, provider: Provider) -> str:
        probes = self.config.provider_probes
        return probes.get(provider.name) or probes.get(provider.connector) or (
            self.config.provider_probe)

    def due(self) -> tuple[list[Provider], list[Model]]:
        """What the next round would probe: downed providers and standby models whose
        cooldown has expired and whose trial is free."""
        s = self._services
        now = s.clock()
        providers = []
        down: set[str] = set()
        for provider in s.providers.values():
            ps = s.state.provider(provider.name)
            if ps.available:
                continue
            down.add(provider.name)
            if provider.enabled and not ps.trial_in_flight and 0 < ps.cooldown_until <= now:
                providers.append(provider)
        models = []
        for model in s.models.values():
            if model.provider in down or model.provider not in s.providers:
                continue
            st = s.state.model(model.id)
            if (st.status != ACTIVE and not st.trial_in_flight
                    and 0 < st.cooldown_until <= now):
                models.append(model)
        return providers, models

    async def run_once(self) -> list[ProbeResult]:
        """One round: probe everything that is due (bounded concurrency); return what
        happened."""
        self.rounds += 1
        providers, models = self.due()
        gate = asyncio.Semaphore(self.config.concurrency)

        async def bounded(coro: Any) -> ProbeResult:
            async with gate:
                return await coro  # type: ignore[no-any-return]

        results = await asyncio.gather(
            *(bounded(self._probe_provider(p)) for p in providers),
            *(bounded(self._probe_model(m)) for m in models))
        for r in results:
            logger.debug("probe of {} {}: {}", r.kind, r.target,
                         "ok" if r.ok else f"failed: {r.error}")
        return list(results)

    async def _probe_provider(self, provider: Provider) -> ProbeResult:
        s = self._services
        ps = s.state.provider(provider.name)
        if ps.trial_in_flight:  # live traffic took it meanwhile
            return ProbeResult(kind="provider", target=provider.name, ok=False,
                               error="trial in flight")
        ps.trial_in_flight = True
        try:
            if self._provider_probe(provider) == "completion":
                model = next((m for m in s.models.values() if m.provider == provider.name),
                             None)
                if model is None:
                    await provider.adapter.list_models(self._timeouts)
                else:
                    await self._ping(provider, model)
            else:
                await provider.adapter.list_models(self._timeouts)
        except asyncio.CancelledError:
            ps.trial_in_flight = False
            raise
        except Exception as exc:
            ps.trial_in_flight = False
            now = s.clock()
            reason = ps.deactivation_reason or "probe_failed"
            if isinstance(exc, AuthenticationError):
                reason = "authentication_rejected"
            self._rotation.provider_down(provider.name, reason,
                                         now + (ps.down_for or _PROVIDER_DOWN_DEFAULT))
            ps.last_probe = now
            return ProbeResult(kind="provider", target=provider.name, ok=False,
                               error=_describe(exc))
        ps.trial_in_flight = False
        ps.last_probe = s.clock()
        self._rotation.provider_up(provider.name)
        return ProbeResult(kind="provider", target=provider.name, ok=True)

    async def _probe_model(self, model: Model) -> ProbeResult:
        s = self._services
        st = s.state.model(model.id)
        if st.trial_in_flight or st.status == ACTIVE:
            return ProbeResult(kind="model", target=model.id, ok=False,
                               error="trial in flight")
        provider = s.providers[model.provider]
        length = max(st.cooldown_until - (st.deactivated_at or st.cooldown_until), 0.0)
        st.trial_in_flight = True
        try:
            await self._ping(provider, model)
        except asyncio.CancelledError:
            st.trial_in_flight = False
            raise
        except Exception as exc:
            st.trial_in_flight = False
            now = s.clock()
            self._rotation.deactivate(model, st.deactivation_reason or "probe_failed",
                                      until=now + (length or _cooldown_of(model, s)))
            return ProbeResult(kind="model", target=model.id, ok=False, error=_describe(exc))
        st.trial_in_flight = False
        self._rotation.recovered(model)
        return ProbeResult(kind="model", target=model.id, ok=True)

    async def _ping(self, provider: Provider, model: Model) -> None:
        if any(not c.startswith("representation.") for c in model.capabilities):
            await provider.adapter.complete(model, _PING, self._timeouts)
        else:
            await provider.adapter.embed(model, _PING_EMBED, self._timeouts)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _cooldown_of(model: Model, services: Services) -> float:
    """The cooldown of the first configured pool with ``model`` (else its direct pool's)."""
    for pool in services.pools.values():
        if any(m.id == model.id for m in pool.models):
            return float(pool.config.cooldown)
    direct = services.direct_pools.get(model.id)
    return float(direct.config.cooldown) if direct is not None else 60.0


# --------------------------------------------------------------------------- registry sync


@frozen(kw_only=True)
class SyncRule:
    """What to make of an upstream model the connector's catalogue does not know.

    ``match`` is a glob on the upstream name (``"llama-*"``); ``capabilities`` (aliases or
    dotted paths) are required; ``features`` and ``context_window`` are optional.
    """

    match: str
    capabilities: tuple[str, ...]
    features: tuple[str, ...] = ()
    context_window: int | None = None


@frozen(kw_only=True)
class RegistrySyncConfig:
    """Config of ``modelmesh.registry-sync.v1``.

    ``interval`` between syncs (± ``jitter``; the first runs at start); ``providers`` limits
    the sync to these provider names (default: all); ``include`` / ``exclude`` are globs on
    upstream names; ``rules`` describe models the catalogue does not know (first match wins);
    at most ``max_new`` models are added per sync.
    """

    interval: Duration = Duration(3600.0)
    jitter: float = 0.1
    providers: tuple[str, ...] | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    rules: tuple[SyncRule, ...] = ()
    max_new: int = 50
    timeout: Duration = Duration(30.0)

    def __attrs_post_init__(self) -> None:
        errors = []
        if self.interval <= 0:
            errors.append("interval: must be positive")
        if not 0 <= self.jitter < 1:
            errors.append("jitter: must be at least 0 and below 1")
        if self.max_new < 0:
            errors.append("max_new: must be 0 or more")
        if errors:
            raise ConfigError([f"config.{e}" for e in errors])


class RegistrySync(_Periodic):
    """Adds newly available upstream models to the running mesh (``modelmesh.registry-sync.v1``).

    Each sync calls every provider's ``list_models``. An upstream name that no model of that
    provider uses yet, that passes ``include`` / ``exclude``, and whose capabilities are known
    — from the connector's catalogue, else the first matching ``rules`` entry; a name known
    to neither is skipped, never guessed — becomes the model ``<provider>.<name>``:

    * it joins every pool with a ``capability`` covering one of its capabilities whose
      ``providers`` / ``excluded_providers`` allow its provider (pools that only list
      ``models`` never change), and gets its direct pool (its id routes);
    * a ``model.discovered`` event names it and the pools it joined.

    Models that disappear upstream are kept (a listing glitch must not drop them; disable
    them in the configuration). Discovered models live until the next reload, which rebuilds
    from the configuration and syncs again.
    """

    def __init__(self, config: RegistrySyncConfig | None, services: Services) -> None:
        super().__init__()
        cfg = config or RegistrySyncConfig()
        self.config = cfg
        self._services = services
        self._interval = cfg.interval
        self._jitter = cfg.jitter
        self._initial = True
        self._rng = services.rng
        self._timeouts = Timeouts(connect=cfg.timeout, first_byte=cfg.timeout,
                                  idle=cfg.timeout, total=cfg.timeout)
        self.discovered: list[str] = []
        self.skipped: dict[str, str] = {}
        tree = services.capabilities
        self._rules: list[tuple[SyncRule, tuple[str, ...]]] = []
        errors = []
        for i, rule in enumerate(cfg.rules):
            caps = []
            for j, name in enumerate(rule.capabilities):
                full = tree.try_resolve(name)
                if full is None:
                    errors.append(f"config.rules.{i}.capabilities.{j}: unknown capability "
                                  f"{name!r}")
                else:
                    caps.append(full)
            if not rule.capabilities:
                errors.append(f"config.rules.{i}.capabilities: give at least one")
            self._rules.append((rule, tuple(caps)))
        if errors:
            raise ConfigError(errors)

    def _wanted(self, name: str) -> bool:
        cfg = self.config
        return (any(fnmatch.fnmatchcase(name, g) for g in cfg.include)
                and not any(fnmatch.fnmatchcase(name, g) for g in cfg.exclude))

    def _describe(self, provider: str, name: str) -> Model | None:
        info = next((i for i in self._services.catalogues.get(provider, ())
                     if i.name == name), None)
        mid = f"{provider}.{name}"
        if info is not None:
            tree = self._services.capabilities
            caps = tuple(c for c in (tree.try_resolve(c) for c in info.capabilities) if c)
            return _model(mid, provider, info, caps) if caps else None
        for rule, caps in self._rules:
            if fnmatch.fnmatchcase(name, rule.match):
                return Model(id=mid, provider=provider, upstream_id=name, capabilities=caps,
                             features=frozenset(rule.features),
                             context_window=rule.context_window)
        return None

    async def run_once(self) -> list[str]:
        """One sync; returns the ids of the models it added."""
        s = self._services
        names = self.config.providers
        providers = [p for p in s.providers.values()
                     if p.enabled and (names is None or p.name in names)]
        listings = await asyncio.gather(
            *(p.adapter.list_models(self._timeouts) for p in providers), return_exceptions=True)
        added: list[str] = []
        for provider, listing in zip(providers, listings, strict=True):
            if isinstance(listing, BaseException):
                if isinstance(listing, asyncio.CancelledError):
                    raise listing
                logger.info("registry sync: listing provider {} failed: {}", provider.name,
                            listing if isinstance(listing, ProviderError) else repr(listing))
                continue
            known = {m.upstream_id for m in s.models.values() if m.provider == provider.name}
            for name in listing:
                if name in known or not self._wanted(name):
                    continue
                mid = f"{provider.name}.{name}"
                if mid in s.models:
                    continue
                if len(added) >= self.config.max_new:
                    self.skipped[mid] = "max_new reached"
                    continue
                model = self._describe(provider.name, name)
                if model is None:
                    self.skipped[mid] = "capabilities unknown (no catalogue entry, no rule)"
                    continue
                self._add(model)
                added.append(mid)
        self.discovered.extend(added)
        return added

    def _add(self, model: Model) -> None:
        s = self._services
        tree = s.capabilities
        s.models[model.id] = model  # type: ignore[index]
        provider = s.providers.get(model.provider)
        if provider is not None:
            # What it can serve, as the assembly works it out for configured models.
            s.model_operations[model.id] = serving_operations(  # type: ignore[index]
                model.capabilities, provider.adapter, s.operations.values())
        joined = []
        for pool in s.pools.values():
            cfg = pool.config
            if pool.capability is None or pool.mode == "direct":
                continue
            if cfg.providers is not None and model.provider not in cfg.providers:
                continue
            if model.provider in cfg.excluded_providers:
                continue
            if any(tree.covers(pool.capability, c) for c in model.capabilities):
                pool.models.append(model)
                joined.append(pool.name)
        if model.id not in s.direct_pools:
            # like the direct pools built at assembly: the mesh's retry, same model only
            template = next(iter(s.direct_pools.values()), None)
            s.direct_pools[model.id] = CapabilityPool(  # type: ignore[index]
                name=model.id, capability=None, models=[model], strategy=StickUntilFailure(),
                strategy_name="modelmesh.stick-until-failure.v1",
                config=PoolConfig(models=(model.id,)),
                retry=template.retry if template is not None else RetryConfig(
                    scope=RetryScope.SAME_MODEL),
                streaming=template.streaming if template is not None else None,
                mode="direct")
        logger.info("registry sync: added {} to {}", model.id, ", ".join(joined) or "no pool")
        if s.events.enabled:
            s.events.emit(EventType.MODEL_DISCOVERED, model=model.id, provider=model.provider,
                          pools=joined, capabilities=list(model.capabilities))


def _model(mid: str, provider: str, info: ModelInfo, caps: Sequence[str]) -> Model:
    return Model(id=mid, provider=provider, upstream_id=info.name, capabilities=tuple(caps),
                 delivery_modes=info.delivery_modes, features=info.features,
                 context_window=info.context_window, max_output_tokens=info.max_output_tokens,
                 pricing=info.pricing)


# --------------------------------------------------------------------------- registration


@hookimpl
def modelmesh_discovery() -> list[DiscoverySpec]:
    """The built-in discovery connectors."""
    return [
        DiscoverySpec(name="modelmesh.health-monitor.v1", factory=HealthMonitor,
                      config_type=HealthMonitorConfig,
                      description="half-open probes of downed providers and standby models"),
        DiscoverySpec(name="modelmesh.registry-sync.v1", factory=RegistrySync,
                      config_type=RegistrySyncConfig,
                      description="adds newly listed upstream models to the pools"),
    ]
