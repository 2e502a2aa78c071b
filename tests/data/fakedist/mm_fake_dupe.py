"""A plugin registering a strategy under the same name as ``mm_fake_good``."""

from modelmesh_core import StrategySpec, hookimpl


@hookimpl
def modelmesh_strategies():
    return [StrategySpec(name="fake.first.v1", factory=lambda config, services: None)]
