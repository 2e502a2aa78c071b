"""``modelmesh.free-tier.v1``: free quotas first, to the last request, then paid models.

A candidate is *free* when its quotas are marked ``free`` (``models.<id>.limits.free``, its
provider's ``limits.free``, or catalogue free-tier quotas of a provider configured with
``free_tier: true``). For each request the strategy:

1. asks the admission ledger whether each free candidate has room for *this* request
   (rolling minute, day, month, the upstream's last reported remaining requests and tokens,
   maintenance): one without room is predicted exhausted and moved behind the others, so no
   request is sent to a quota that would answer 429;
2. keeps the configured order of the free models, except that candidates serving the same
   upstream model through several API keys of one vendor (provider entries with the same
   connector) are taken most-headroom first, which spreads the load over the keys;
3. appends the paid candidates (``paid: fallback``, default) or leaves them out
   (``paid: never``: once the free quotas are spent the caller gets a 429 with
   ``Retry-After`` naming when the first one has room again).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen

from ..pipeline import PipelineContext
from ..types import Model

if TYPE_CHECKING:
    from ..ledger import Ledger
    from ..pools import Services
    from ..state import Clock
    from ..types import Provider

__all__ = ["FreeTier", "FreeTierConfig", "PaidFallback"]


class PaidFallback(enum.Enum):
    """What the free-tier strategy does with paid models."""

    FALLBACK = "fallback"
    NEVER = "never"


@frozen(kw_only=True)
class FreeTierConfig:
    """Config of ``modelmesh.free-tier.v1``: ``paid`` is ``fallback`` (paid models after the
    free ones are spent) or ``never``."""

    paid: PaidFallback = PaidFallback.FALLBACK


class FreeTier:
    """See the module docstring. Score = the candidate's headroom (0…1; paid: -1)."""

    __slots__ = ("_clock", "_free", "_groups", "_ledger", "_never")

    def __init__(self, config: FreeTierConfig, providers: Mapping[str, Provider],
                 clock: Clock, ledger: Ledger | None) -> None:
        self._never = config.paid is PaidFallback.NEVER
        self._clock = clock
        self._ledger = ledger
        self._free: dict[str, bool] = {}
        self._groups: dict[str, tuple[str, str]] = {}
        for name, provider in providers.items():
            self._groups[name] = (provider.connector, name)
            self._free[name] = provider.limits.free

    def is_free(self, model: Model) -> bool:
        """Whether ``model``'s quotas are a free tier."""
        return model.limits.free or self._free.get(model.provider, False)

    def _group(self, model: Model) -> tuple[str, str]:
        connector = self._groups.get(model.provider, ("", model.provider))[0]
        return connector, model.upstream_id

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Free candidates with room (configured order, keys of one vendor by headroom),
        then paid ones (unless ``paid: never``), then the free ones predicted exhausted."""
        ledger = self._ledger
        now = context.now or self._clock()
        scores = context.scores
        room: list[tuple[int, float, int, Model]] = []
        spent: list[Model] = []
        paid: list[Model] = []
        first: dict[tuple[str, str], int] = {}
        for i, m in enumerate(candidates):
            if not self.is_free(m):
                scores[m.id] = -1.0
                if not self._never:
                    paid.append(m)
                continue
            h = 1.0
            if ledger is not None:
                why = ledger.peek(context.pool, m, context.request, now, budgets=False)
                if why is not None:
                    scores[m.id] = 0.0
                    spent.append(m)
                    continue
                h = ledger.headroom(m, now)
            scores[m.id] = h
            rank = first.setdefault(self._group(m), i)
            room.append((rank, -h, i, m))
        room.sort(key=_key)
        return [r[3] for r in room] + paid + spent


def _key(item: tuple[int, float, int, Any]) -> tuple[int, float, int]:
    return item[0], item[1], item[2]


def free_tier(config: FreeTierConfig | None, services: Services) -> FreeTier:
    """The ``modelmesh.free-tier.v1`` factory."""
    return FreeTier(config or FreeTierConfig(), services.providers, services.clock,
                    services.ledger)
