"""A working plugin: the ``fake.first.v1`` strategy and the ``fake.tag`` stage."""

from __future__ import annotations

from modelmesh_core import StageSpec, StrategySpec, hookimpl

CALLS = {"strategies": 0, "stages": 0}


class First:
    """Keeps the candidates in configuration order."""

    def order(self, candidates, context):
        return list(candidates)


class Tag:
    """Marks the context so tests can see the stage ran."""

    name = "fake.tag"

    def process(self, context):
        context.metadata["fake.tag"] = True
        return context


@hookimpl
def modelmesh_strategies():
    CALLS["strategies"] += 1
    return [StrategySpec(name="fake.first.v1", aliases=("fake-first",),
                         factory=lambda config, services: First())]


@hookimpl
def modelmesh_stages():
    CALLS["stages"] += 1
    return [StageSpec(name="fake.tag", factory=lambda config, services: Tag(), order=450)]
