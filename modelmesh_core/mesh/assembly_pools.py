"""Assembly steps for pools: configured pools, implicit pools (one per capability leaf that
has models but no covering pool) and direct pools (one per model id)."""

from __future__ import annotations

import attrs

from ..capabilities import CapabilityTree
from ..config import PoolConfig, RetryScope
from ..errors import CapabilityNotFoundError
from ..errors import did_you_mean as _hint
from ..pools import CapabilityPool
from ..types import Model, Provider
from .assembly_base import BuilderBase, timeouts_from

__all__ = ["PoolSteps"]


class PoolSteps(BuilderBase):
    """Builds the pools (a part of :class:`~.assembly.Builder`)."""

    def _members(self, tree: CapabilityTree, name: str, pc: PoolConfig,
                 models: dict[str, Model], cap: str | None) -> list[Model]:
        path = f"pools.{name}"
        allowed = set(pc.providers) if pc.providers is not None else None
        excluded = set(pc.excluded_providers)
        members: list[Model] = []
        for i, mid in enumerate(pc.models or ()):
            model = models.get(mid)
            if model is None:
                if mid not in self.config.models and mid not in self.broken.get("models", ()):
                    self.err(f"{path}.models.{i}", f"unknown model {mid!r}"
                             f"{_hint(mid, models)}")
                continue
            members.append(model)
        if cap is not None:
            seen = {m.id for m in members}
            for model in models.values():
                if model.id in seen or model.provider in excluded:
                    continue
                if allowed is not None and model.provider not in allowed:
                    continue
                if any(tree.covers(cap, c) for c in model.capabilities):
                    members.append(model)
        return members

    def _pools(self, tree: CapabilityTree, models: dict[str, Model],
               providers: dict[str, Provider]) -> dict[str, CapabilityPool]:
        cfg = self.config
        pools: dict[str, CapabilityPool] = {}
        for name, pc in cfg.pools.items():
            path = f"pools.{name}"
            if name in models:
                self.err(path, "a pool may not have the same name as a model")
            cap: str | None = None
            if pc.capability is not None:
                cap = tree.try_resolve(pc.capability)
                if cap is None:
                    try:
                        tree.resolve(pc.capability)
                    except CapabilityNotFoundError as exc:
                        self.err(f"{path}.capability", str(exc))
            elif not pc.models:
                self.err(path, "give a capability, a models list, or both")
            for key in ("providers", "excluded_providers"):
                for i, prov in enumerate(getattr(pc, key) or ()):
                    if prov not in cfg.providers and prov not in providers and (
                            prov not in self.broken.get("providers", ())):
                        self.err(f"{path}.{key}.{i}", f"unknown provider {prov!r}"
                                 f"{_hint(prov, cfg.providers)}")
            spec = self.registry.strategy(pc.strategy.connector)
            if spec is None:
                self.err(f"{path}.strategy", f"unknown strategy {pc.strategy.connector!r}"
                         f"{_hint(pc.strategy.connector, self.registry.strategy_names())}; "
                         f"installed: {', '.join(sorted(self.registry.strategies))}")
            else:
                self.plugin_config(pc.strategy.config, spec.config_type,
                                   f"{path}.strategy.config")
            members = self._members(tree, name, pc, models, cap)
            if not members and (cap is not None or pc.models) and not self.errors:
                self.err(path, f"no enabled model serves this pool (capability {cap!r}); add a "
                               "model with this capability or list models explicitly")
            mode = ("hybrid" if pc.models and cap else "explicit" if pc.models else
                    "capability")
            pools[name] = CapabilityPool(
                name=name, capability=cap, models=members, strategy=None,  # type: ignore[arg-type]
                strategy_name=spec.name if spec else pc.strategy.connector, config=pc,
                retry=pc.retry or cfg.retry, streaming=pc.streaming or cfg.streaming,
                timeouts=timeouts_from(pc.timeout) if pc.timeout is not None else None,
                priority=pc.priority, mode=mode,
            )
        return pools

    def _implicit_pools(self, tree: CapabilityTree, models: dict[str, Model],
                        pools: dict[str, CapabilityPool]) -> None:
        """One pool per capability leaf that has models but no covering pool."""
        aliases: dict[str, str] = {}
        for alias, target in sorted(tree.aliases().items(), key=lambda kv: (len(kv[0]), kv[0])):
            aliases.setdefault(target, alias)
        leaves: dict[str, list[Model]] = {}
        for model in models.values():
            for cap in model.capabilities:
                leaves.setdefault(cap, []).append(model)
        for cap, members in leaves.items():
            covered = any(
                (p.capability is not None and tree.covers(p.capability, cap))
                or (p.capability is None and any(cap in m.capabilities for m in p.models))
                for p in pools.values()
            )
            if covered:
                continue
            name = aliases.get(cap, cap)
            if name in pools or name in models:
                name = cap
            pools[name] = CapabilityPool(
                name=name, capability=cap, models=members, strategy=None,  # type: ignore[arg-type]
                strategy_name="modelmesh.stick-until-failure.v1",
                config=PoolConfig(capability=cap), retry=self.config.retry,
                streaming=self.config.streaming, mode="implicit",
            )

    def _direct_pools(self, models: dict[str, Model]) -> dict[str, CapabilityPool]:
        """A single-model pool per model, for requests that name a concrete model id."""
        retry = attrs.evolve(self.config.retry, scope=RetryScope.SAME_MODEL)
        return {
            mid: CapabilityPool(
                name=mid, capability=None, models=[m], strategy=None,  # type: ignore[arg-type]
                strategy_name="modelmesh.stick-until-failure.v1",
                config=PoolConfig(models=(mid,)), retry=retry,
                streaming=self.config.streaming, mode="direct",
            )
            for mid, m in models.items()
        }
