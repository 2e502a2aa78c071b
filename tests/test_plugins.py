"""The plugin framework: real entry-point discovery against fake installed distributions
(``tests/data/fakedist``), the load report, strict mode, require / block, conflicts, record
validation, embedded plugins, and the rule that no pluggy hook runs per request."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from modelmesh_core import (
    CompletionRequest,
    ModelMesh,
    PipelineRequest,
    PluginError,
    PluginLoadWarning,
    StageSpec,
    StrategySpec,
    hookimpl,
)
from modelmesh_core.mesh import assembly as mesh_module
from modelmesh_core.mesh import assembly_base, assembly_models, assembly_pools, facade
from modelmesh_core.plugins import (
    DEFAULT_PLUGINS,
    STRICT_ENV,
    PluginLoadRecord,
    PluginRegistry,
    load_plugins,
)
from modelmesh_core.testing import MockPlugin, mock_config

FAKEDIST = Path(__file__).parent / "data" / "fakedist"
FAKE_NAMES = {"good", "broken", "badhook", "dupe"}


@pytest.fixture
def fakedist(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Put the fake distributions on ``sys.path`` for this test only; strict mode off."""
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.syspath_prepend(str(FAKEDIST))
    yield FAKEDIST
    for mod in ("mm_fake_good", "mm_fake_broken", "mm_fake_badhook", "mm_fake_dupe"):
        sys.modules.pop(mod, None)


def records(report: list[PluginLoadRecord]) -> dict[str, PluginLoadRecord]:
    return {r.name: r for r in report}


def mesh_config(**plugins: Any) -> dict[str, Any]:
    cfg = mock_config()
    cfg["plugins"] = {"entry_points": True, **plugins}
    return cfg


# --------------------------------------------------------------------------- discovery


def test_load_report_records_every_entry_point(fakedist: Path) -> None:
    with pytest.warns(PluginLoadWarning) as caught:
        pm, report = load_plugins(blocked=["dupe"], strict=False)
    by_name = records(report)
    # An embedding application hears of each failure through the warnings module.
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert messages[0].startswith("ModelMesh plugin 'badhook' (distribution mm-fake-good) "
                                  "failed to load and was skipped: invalid hooks:")
    assert messages[1].startswith("ModelMesh plugin 'broken' (distribution mm-fake-good) "
                                  "failed to load and was skipped: import failed:")
    assert all(w.filename == __file__ for w in caught)  # points at the caller

    good = by_name["good"]
    assert (good.status, good.source) == ("loaded", "entrypoint")
    assert (good.distribution, good.version) == ("mm-fake-good", "1.2.3")
    assert good.module == "mm_fake_good"
    assert good.hooks == ("modelmesh_stages", "modelmesh_strategies")
    assert good.error == ""

    broken = by_name["broken"]
    assert (broken.status, broken.distribution, broken.version) == (
        "failed", "mm-fake-good", "1.2.3")
    assert "import failed" in broken.error
    assert "ImportError" in broken.error and "definitely-not-installed" in broken.error

    badhook = by_name["badhook"]
    assert badhook.status == "failed"
    assert badhook.distribution == "mm-fake-good"
    assert "modelmesh_strategiez" in badhook.error

    dupe = by_name["dupe"]
    assert (dupe.status, dupe.distribution, dupe.version) == ("blocked", "mm-fake-dupe", "0.9.0")

    # Failed plugins leave nothing behind in the manager.
    assert pm.has_plugin("good")
    assert not pm.has_plugin("broken") and not pm.has_plugin("badhook")
    assert not pm.has_plugin("dupe")
    pm.check_pending()


def test_builtins_are_registered_before_entry_points(fakedist: Path) -> None:
    with pytest.warns(PluginLoadWarning):
        pm, report = load_plugins(blocked=["dupe"], strict=False)
    sources = [r.source for r in report]
    first_ep = sources.index("entrypoint")
    assert all(s == "builtin" for s in sources[:first_ep])
    assert "builtin" not in sources[first_ep:]
    assert [r.name for r in report[:first_ep]] == list(DEFAULT_PLUGINS)
    assert all(r.distribution == "modelmesh-core" and r.status == "loaded"
               for r in report[:first_ep])
    names = [name for name, _ in pm.list_name_plugin()]
    assert names.index("good") > max(names.index(m) for m in DEFAULT_PLUGINS)


async def test_broken_plugins_warn_and_the_mesh_goes_on(
    fakedist: Path, make_mesh: Any
) -> None:
    cfg = mesh_config(block=["dupe"])
    cfg["pools"] = {"chat": {"capability": "chat-completion", "strategy": "fake-first"}}
    with pytest.warns(PluginLoadWarning) as caught:
        mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    assert {str(w.message).split("'")[1] for w in caught} == {"broken", "badhook"}
    by_name = records(mesh.registry.report)
    assert by_name["broken"].status == "failed"
    assert by_name["badhook"].status == "failed"
    assert by_name["good"].status == "loaded"
    assert mesh.registry.strategies["fake.first.v1"].plugin == "good"
    assert mesh.router.get_pool("chat").strategy_name == "fake.first.v1"
    assert "fake.tag" in mesh.pipeline.stage_names()
    names = mesh.pipeline.stage_names()
    assert names.index("state-filter") < names.index("fake.tag") < names.index(
        "selection-strategy")
    result = await mesh.pipeline.execute(PipelineRequest(capability="chat"))
    assert result.context is not None and result.context.metadata["fake.tag"] is True


def test_strict_mode_raises_on_the_first_failure(fakedist: Path) -> None:
    with pytest.raises(PluginError) as exc:
        load_plugins(blocked=["dupe"], strict=True)
    message = str(exc.value)
    # Entry points load in name order: badhook is the first to fail.
    assert "'badhook'" in message and "mm-fake-good" in message
    assert "modelmesh_strategiez" in message


def test_strict_mode_from_the_environment(
    fakedist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginError, match="mm-fake-good"):
        load_plugins(blocked=["dupe"])
    # The explicit argument wins over the environment.
    with pytest.warns(PluginLoadWarning):
        _, report = load_plugins(blocked=["dupe"], strict=False)
    assert records(report)["broken"].status == "failed"


async def test_strict_mode_from_env_and_config_in_a_mesh(
    fakedist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginError, match="badhook"):
        await ModelMesh(mesh_config(block=["dupe"]), plugins=[MockPlugin()]).initialize()
    monkeypatch.delenv(STRICT_ENV)
    with pytest.raises(PluginError, match="badhook"):
        await ModelMesh(mesh_config(block=["dupe"], strict=True),
                        plugins=[MockPlugin()]).initialize()


async def test_a_required_plugin_that_failed_is_a_hard_error(fakedist: Path) -> None:
    mesh = ModelMesh(mesh_config(block=["dupe"], require=["good", "broken"]),
                     plugins=[MockPlugin()])
    with pytest.raises(PluginError) as exc, pytest.warns(PluginLoadWarning):
        await mesh.initialize()
    message = str(exc.value)
    assert "broken" in message
    assert "definitely-not-installed" in message  # says why
    assert "good:" not in message


def test_a_required_plugin_that_is_not_installed_is_a_hard_error(fakedist: Path) -> None:
    with pytest.raises(PluginError, match="nothere: not installed"), \
            pytest.warns(PluginLoadWarning):
        load_plugins(blocked=["dupe"], required=["nothere"], strict=False)


async def test_block_skips_a_plugin(fakedist: Path, make_mesh: Any) -> None:
    mesh = await make_mesh(mesh_config(block=["dupe", "good", "broken", "badhook"]),
                           plugins=[MockPlugin()])
    by_name = records(mesh.registry.report)
    assert {by_name[n].status for n in FAKE_NAMES} == {"blocked"}
    assert "fake.first.v1" not in mesh.registry.strategies
    assert "fake.tag" not in mesh.pipeline.stage_names()


async def test_entry_points_can_be_turned_off(fakedist: Path, make_mesh: Any) -> None:
    cfg = mock_config()  # plugins.entry_points: false
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    assert FAKE_NAMES.isdisjoint(records(mesh.registry.report))


async def test_duplicate_names_are_an_error_naming_both_distributions(fakedist: Path) -> None:
    mesh = ModelMesh(mesh_config(block=["broken", "badhook"]), plugins=[MockPlugin()])
    with pytest.raises(PluginError) as exc:
        await mesh.initialize()
    message = str(exc.value)
    assert "fake.first.v1" in message
    assert "mm-fake-good" in message and "mm-fake-dupe" in message
    assert "'good'" in message and "'dupe'" in message


# --------------------------------------------------------------------------- embedded plugins


class EmbeddedPlugin:
    """Registers a strategy and a stage; counts how often its hooks are called."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"strategies": 0, "stages": 0}
        self.ordered = 0

    @hookimpl
    def modelmesh_strategies(self) -> list[StrategySpec]:
        self.calls["strategies"] += 1
        plugin = self

        class Reverse:
            def order(self, candidates: Any, context: Any) -> list[Any]:
                plugin.ordered += 1
                return list(reversed(candidates))

        return [StrategySpec(name="embedded.reverse.v1",
                             factory=lambda config, services: Reverse())]

    @hookimpl
    def modelmesh_stages(self) -> list[StageSpec]:
        self.calls["stages"] += 1

        class Noop:
            name = "embedded.noop"

            def process(self, context: Any) -> Any:
                return context

        return [StageSpec(name="embedded.noop", factory=lambda config, services: Noop(),
                          order=550)]


async def test_an_embedded_plugin(make_mesh: Any) -> None:
    plugin = EmbeddedPlugin()
    cfg = mock_config(providers=("a", "b"))
    cfg["pools"] = {"chat": {"capability": "chat-completion", "strategy": "embedded.reverse.v1"}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), plugin])
    report = [r for r in mesh.registry.report if r.source == "embedded"]
    assert {r.status for r in report} == {"loaded"}
    assert any(r.hooks == ("modelmesh_stages", "modelmesh_strategies") for r in report)
    assert mesh.registry.strategies["embedded.reverse.v1"].plugin.startswith("EmbeddedPlugin")
    assert mesh.pipeline.stage_names()[-2:] == ["embedded.noop", "retry-policy"]
    decision = await mesh.router.route("chat")
    assert decision.model_id == "b.mock-chat"
    assert plugin.calls == {"strategies": 1, "stages": 1}


async def test_an_embedded_plugin_with_a_misspelled_hook_is_rejected() -> None:
    class Misspelled:
        @hookimpl
        def modelmesh_stagez(self) -> list[StageSpec]:
            return []

    with pytest.raises(PluginError, match="modelmesh_stagez"):
        await ModelMesh(mock_config(), plugins=[MockPlugin(), Misspelled()]).initialize()


async def test_a_plugin_returning_the_wrong_record_type_is_rejected() -> None:
    class Wrong:
        @hookimpl
        def modelmesh_strategies(self) -> list[Any]:
            return [StageSpec(name="oops", factory=lambda c, s: None, order=1)]

    with pytest.raises(PluginError) as exc:
        await ModelMesh(mock_config(), plugins=[MockPlugin(), Wrong()]).initialize()
    message = str(exc.value)
    assert "StageSpec" in message and "modelmesh_strategies" in message
    assert "StrategySpec" in message


async def test_a_plugin_returning_a_non_record_is_rejected() -> None:
    class NotARecord:
        @hookimpl
        def modelmesh_stages(self) -> list[Any]:
            return [{"name": "dict-stage", "order": 1}]

    with pytest.raises(PluginError, match="expected StageSpec"):
        await ModelMesh(mock_config(), plugins=[MockPlugin(), NotARecord()]).initialize()


async def test_a_plugin_raising_in_its_hook_is_a_plugin_error() -> None:
    class Raises:
        @hookimpl
        def modelmesh_strategies(self) -> list[StrategySpec]:
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="boom"):
        await ModelMesh(mock_config(), plugins=[MockPlugin(), Raises()]).initialize()


async def test_an_embedded_plugin_may_not_take_a_builtin_name() -> None:
    class Hijack:
        @hookimpl
        def modelmesh_strategies(self) -> list[StrategySpec]:
            return [StrategySpec(name="modelmesh.round-robin.v1",
                                 factory=lambda config, services: None)]

    with pytest.raises(PluginError) as exc:
        await ModelMesh(mock_config(), plugins=[MockPlugin(), Hijack()]).initialize()
    assert "modelmesh.round-robin.v1" in str(exc.value)
    assert "modelmesh-core" in str(exc.value)


def test_records_are_stamped_with_their_plugin() -> None:
    pm, report = load_plugins(entry_points=False, extra=[MockPlugin()], strict=True)
    registry = PluginRegistry.from_manager(pm, report)
    assert registry.stages["capability-resolver"].plugin == "modelmesh_core.builtin.stages"
    assert registry.strategy("round-robin") is registry.strategies["modelmesh.round-robin.v1"]
    assert registry.providers["modelmesh.mock.v1"].plugin.startswith("MockPlugin")


# --------------------------------------------------------------------------- the request path


async def test_no_hook_is_called_and_no_config_read_per_request(
    fakedist: Path, monkeypatch: pytest.MonkeyPatch, make_mesh: Any
) -> None:
    counts = {"hook": 0, "config": 0}
    original_call = pluggy.HookCaller.__call__

    def counting_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["hook"] += 1
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(pluggy.HookCaller, "__call__", counting_call)
    managers: list[pluggy.PluginManager] = []
    original_load = mesh_module.load_plugins

    def tracking_load(**kwargs: Any) -> Any:
        pm, report = original_load(**kwargs)
        pm.add_hookcall_monitoring(
            lambda *a: counts.__setitem__("hook", counts["hook"] + 1), lambda *a: None)
        managers.append(pm)
        return pm, report

    monkeypatch.setattr(mesh_module, "load_plugins", tracking_load)
    # Every configuration function the mesh uses (reading, interpolating, structuring), in
    # every module of the mesh package.
    mesh_modules = (mesh_module, assembly_base, assembly_models, assembly_pools, facade)
    config_functions = [
        (module, name) for module in mesh_modules for name, obj in vars(module).items()
        if callable(obj) and not isinstance(obj, type)
        and getattr(obj, "__module__", "") == "modelmesh_core.config"
    ]
    assert (mesh_module, "read_source") in config_functions
    def counting(original: Any) -> Any:
        def counted(*a: Any, **k: Any) -> Any:
            counts["config"] += 1
            return original(*a, **k)

        return counted

    for module, name in config_functions:
        monkeypatch.setattr(module, name, counting(getattr(module, name)))

    embedded = EmbeddedPlugin()
    cfg = mock_config(providers=("a", "b"))
    cfg["plugins"] = {"entry_points": True, "block": ["dupe", "broken", "badhook"]}
    cfg["pools"] = {"chat": {"capability": "chat-completion", "strategy": "embedded.reverse.v1"}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), embedded])
    good = sys.modules["mm_fake_good"]
    assert len(managers) == 1
    assert counts["config"] >= 1
    after_init = dict(counts)
    good_calls = dict(good.CALLS)

    request = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
    for _ in range(25):
        response = await mesh.router.complete("chat", request)
        assert response.model == "b.mock-chat"
    for _ in range(25):
        chunks = [c async for c in mesh.router.stream("chat", request)]
        assert chunks
    assert counts == after_init
    assert counts["hook"] == after_init["hook"]
    assert embedded.calls == {"strategies": 1, "stages": 1}
    assert good.CALLS == good_calls == {"strategies": 1, "stages": 1}
    assert embedded.ordered == 50
