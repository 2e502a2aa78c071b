"""Assembly steps for providers (configured and auto-detected from the environment), models
(the configuration merged with the connectors' catalogues) and their capabilities."""

from __future__ import annotations

from typing import Any

import attrs

from .._log import logger
from ..capabilities import CapabilityTree
from ..config import structure_plugin_config
from ..errors import CapabilityNotFoundError, ConfigError
from ..errors import did_you_mean as _hint
from ..quota import catalogue_limits
from ..redaction import SecretStr, register_secret
from ..types import (
    ALL_DELIVERY_MODES,
    ALL_FEATURES,
    Model,
    ModelInfo,
    Pricing,
    Provider,
    ProviderSpec,
    Timeouts,
)
from .assembly_base import BuilderBase, limits_from, timeouts_from

__all__ = ["ModelSteps"]


class ModelSteps(BuilderBase):
    """Builds providers and models (a part of :class:`~.assembly.Builder`)."""

    def _providers(self) -> tuple[dict[str, Provider], dict[str, ProviderSpec]]:
        cfg = self.config
        reg = self.registry
        providers: dict[str, Provider] = {}
        specs: dict[str, ProviderSpec] = {}
        default_timeouts = timeouts_from(cfg.timeout)
        for name, pc in cfg.providers.items():
            path = f"providers.{name}"
            if "." in name:
                self.err(path, "provider names may not contain dots (model ids are "
                               "<provider>.<model>)")
                continue
            spec = reg.providers.get(pc.connector)
            if spec is None:
                hint = _hint(pc.connector, reg.providers)
                extra = ""
                if not hint:
                    vendor = pc.connector.split(".", 1)[0]
                    extra = f"; is the plugin installed (pip install modelmesh-{vendor})?"
                self.err(f"{path}.connector", f"unknown provider connector {pc.connector!r}"
                         f"{hint}{extra}; installed: {', '.join(sorted(reg.providers)) or 'none'}")
                continue
            conf = self.plugin_config(pc.config, spec.config_type, f"{path}.config")
            specs[name] = spec
            if (conf is None and spec.config_type is not None) or not pc.enabled:
                continue
            timeouts = timeouts_from(pc.timeout) if pc.timeout is not None else default_timeouts
            try:
                adapter = spec.factory(self.mesh._provider_context(name), conf)
            except ConfigError as exc:
                self.errors.extend(
                    e if e.startswith(path) else
                    f"{path}.config.{e.removeprefix('config.')}" for e in exc.errors)
                continue
            providers[name] = Provider(name=name, connector=pc.connector, adapter=adapter,
                                       timeouts=timeouts, limits=limits_from(pc.limits),
                                       enabled=pc.enabled, retry=pc.retry)
        auto = cfg.discovery.auto_detect
        if auto or (auto is None and not cfg.providers):
            self._auto_detect(providers, specs, default_timeouts)
        return providers, specs

    def _auto_detect(self, providers: dict[str, Provider], specs: dict[str, ProviderSpec],
                     timeouts: Timeouts) -> None:
        env = self.mesh._env
        for spec in sorted(self.registry.providers.values(), key=lambda s: s.name):
            if not spec.env_vars:
                continue
            var = next((v for v in spec.env_vars if env.get(v)), None)
            if var is None:
                continue
            name = spec.name.split(".", 1)[0]
            if name in providers or name in specs:
                continue
            data: dict[str, Any] = {}
            fields = {a.name for a in attrs.fields(spec.config_type)} if (
                spec.config_type is not None and attrs.has(spec.config_type)) else set()
            value = env[var]
            if not spec.local and "api_key" in fields:
                register_secret(value)
                data["api_key"] = SecretStr(value)
            conf, errs = structure_plugin_config(data, spec.config_type, f"(auto:{name})")
            if errs:
                logger.warning("auto-detected provider {} skipped: {}", name, "; ".join(errs))
                continue
            try:
                adapter = spec.factory(self.mesh._provider_context(name), conf)
            except ConfigError as exc:
                logger.warning("auto-detected provider {} skipped: {}", name,
                               "; ".join(exc.errors))
                continue
            providers[name] = Provider(name=name, connector=spec.name, adapter=adapter,
                                       timeouts=timeouts)
            specs[name] = spec
            logger.debug("auto-detected provider {} from ${}", name, var)

    def _models(self, tree: CapabilityTree, providers: dict[str, Provider],
                specs: dict[str, ProviderSpec]) -> dict[str, Model]:
        cfg = self.config
        models: dict[str, Model] = {}
        referenced: set[str] = set()
        for mid, mc in cfg.models.items():
            path = f"models.{mid}"
            provider = mc.provider or mid.split(".", 1)[0]
            referenced.add(provider)
            if provider not in specs:
                if provider not in cfg.providers and provider not in self.broken.get(
                        "providers", ()):
                    self.err(f"{path}.provider" if mc.provider else path,
                             f"unknown provider {provider!r}{_hint(provider, cfg.providers)}; "
                             f"providers: {', '.join(sorted(cfg.providers)) or 'none'}")
                elif mc.capabilities is not None:
                    # The provider is configured but its connector is unknown or broken (that
                    # is reported there): still check what the model says of itself, so one
                    # mistake does not hide another.
                    self._capabilities(tree, mc.capabilities, None, f"{path}.capabilities")
                continue
            if "." not in mid and not mc.upstream_id:
                self.err(path, "a model id is <provider>.<model-name> (or set upstream_id)")
                continue
            upstream = mc.upstream_id or mid.split(".", 1)[1]
            info = next((i for i in specs[provider].catalogue if i.name == upstream), None)
            caps = self._capabilities(tree, mc.capabilities, info, f"{path}.capabilities")
            modes = mc.delivery_modes if mc.delivery_modes is not None else (
                tuple(info.delivery_modes) if info else ("sync", "streaming"))
            for i, mode in enumerate(modes):
                if mode not in ALL_DELIVERY_MODES:
                    self.err(f"{path}.delivery_modes.{i}", f"must be one of "
                             f"{', '.join(sorted(ALL_DELIVERY_MODES))}")
            feats = mc.features if mc.features is not None else (
                tuple(info.features) if info else ())
            for i, feat in enumerate(feats):
                if feat not in ALL_FEATURES:
                    self.err(f"{path}.features.{i}", f"unknown feature {feat!r}"
                             f"{_hint(feat, ALL_FEATURES)}; one of "
                             f"{', '.join(sorted(ALL_FEATURES))}")
            if caps is None or not mc.enabled or provider not in providers:
                continue
            pricing = (Pricing(input=mc.pricing.input, output=mc.pricing.output,
                               cached_input=mc.pricing.cached_input,
                               per_request=mc.pricing.per_request,
                               reasoning=mc.pricing.reasoning)
                       if mc.pricing is not None else (info.pricing if info else Pricing()))
            models[mid] = Model(
                id=mid, provider=provider, upstream_id=upstream, capabilities=caps,
                delivery_modes=frozenset(modes), features=frozenset(feats),
                context_window=mc.context_window or (info.context_window if info else None),
                max_output_tokens=mc.max_output_tokens or (
                    info.max_output_tokens if info else None),
                pricing=pricing, priority=mc.priority,
                limits=limits_from(mc.limits) if mc.limits is not None else catalogue_limits(
                    info, cfg.providers.get(provider)),
                weight=mc.weight,
            )
        for name in providers:
            if name in referenced:
                continue
            for info in specs[name].catalogue:
                caps = tuple(c for c in (tree.try_resolve(c) for c in info.capabilities) if c)
                if not caps:
                    continue
                mid = f"{name}.{info.name}"
                models[mid] = self._from_catalogue(mid, name, info, caps)
                if info.free_limits is not None:
                    models[mid] = attrs.evolve(models[mid], limits=catalogue_limits(
                        info, cfg.providers.get(name)))
        return models

    @staticmethod
    def _from_catalogue(mid: str, provider: str, info: ModelInfo,
                        caps: tuple[str, ...]) -> Model:
        return Model(id=mid, provider=provider, upstream_id=info.name, capabilities=caps,
                     delivery_modes=info.delivery_modes, features=info.features,
                     context_window=info.context_window,
                     max_output_tokens=info.max_output_tokens, pricing=info.pricing)

    def _capabilities(self, tree: CapabilityTree, given: tuple[str, ...] | None,
                      info: ModelInfo | None, path: str) -> tuple[str, ...] | None:
        names = given if given is not None else (info.capabilities if info else None)
        if not names:
            self.err(path, "required: the connector's catalogue does not know this model, so "
                           "list its capabilities (e.g. [chat-completion])")
            return None
        out: list[str] = []
        for i, name in enumerate(names):
            full = tree.try_resolve(name)
            if full is None:
                try:
                    tree.resolve(name)
                except CapabilityNotFoundError as exc:
                    self.err(f"{path}.{i}" if given is not None else path, str(exc))
                continue
            out.append(full)
        return tuple(out) if len(out) == len(names) else None
