"""The routing pipeline (seed ``RoutingPipeline``): composition, custom stages from code and
from config, the capability resolver's precedence, pool modes, delivery filtering and the
retry-policy stage. Routing runs through meshes of in-process mock providers."""

from __future__ import annotations

from typing import Any

import pytest

from modelmesh_core import (
    AllProvidersExhaustedError,
    CapabilityNotFoundError,
    CompletionRequest,
    ModelMesh,
    NoActiveModelError,
    PipelineContext,
    PipelineRequest,
    PipelineStage,
    ProviderError,
    RoutingOptions,
    RoutingPipeline,
    StageSpec,
    hookimpl,
)
from modelmesh_core.testing import MockPlugin, mock_config
from modelmesh_core.types import Model, Provider

CHAT = "generation.text-generation.chat-completion"
DEFAULT_STAGES = ["capability-resolver", "pool-selection", "delivery-filter", "state-filter",
                  "selection-strategy", "retry-policy"]
HI = [{"role": "user", "content": "hi"}]


async def mesh_of(make_mesh: Any, config: dict[str, Any], *plugins: object) -> ModelMesh:
    return await make_mesh(config, plugins=[MockPlugin(), *plugins])  # type: ignore[no-any-return]


def chat_models(*ids: str, **fields: Any) -> dict[str, Any]:
    return {mid: {"capabilities": ["chat-completion"], **fields} for mid in ids}


# --------------------------------------------------------------------------- unit: composition


class Named:
    """A minimal sync stage that records it ran."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self._log = log

    def process(self, context: PipelineContext) -> PipelineContext:
        self._log.append(self.name)
        return context


class Pick(PipelineStage):
    """Seeds a pool and candidates so the pipeline can produce a result."""

    name = "pick"

    def __init__(self, pool: Any, models: list[Model]) -> None:
        self._pool, self._models = pool, models

    def process(self, context: PipelineContext) -> PipelineContext:
        context.pool = self._pool
        context.candidates = list(self._models)
        return context


class AsyncDropFirst:
    name = "async-drop-first"

    async def process(self, context: PipelineContext) -> None:
        dropped = context.candidates.pop(0)
        context.dropped[dropped.id] = "dropped by async stage"


def test_add_remove_and_get_stages() -> None:
    log: list[str] = []
    a, b, c = Named("a", log), Named("b", log), Named("c", log)
    pipeline = RoutingPipeline([a, c])
    pipeline.add_stage(b, position=1)
    assert [s.name for s in pipeline.get_stages()] == ["a", "b", "c"]
    assert pipeline.stage_names() == ["a", "b", "c"]
    pipeline.add_stage(Named("d", log))
    pipeline.add_stage(Named("first", log), position=0)
    assert pipeline.stage_names() == ["first", "a", "b", "c", "d"]

    stages = pipeline.get_stages()
    stages.clear()  # a copy: the pipeline is unchanged
    assert len(pipeline.get_stages()) == 5

    pipeline.remove_stage("b")
    assert pipeline.stage_names() == ["first", "a", "c", "d"]
    with pytest.raises(KeyError, match="nope"):
        pipeline.remove_stage("nope")
    with pytest.raises(ValueError, match="duplicate"):
        pipeline.add_stage(Named("a", log))
    assert pipeline.stage_names() == ["first", "a", "c", "d"]
    with pytest.raises(TypeError):
        pipeline.add_stage(object())


async def test_execute_runs_sync_and_async_stages_in_order() -> None:
    log: list[str] = []
    models = [Model(id=f"{p}.m", provider=p, upstream_id="m", capabilities=(CHAT,))
              for p in ("a", "b", "c")]
    providers = {p: Provider(name=p, connector="x", adapter=None)  # type: ignore[arg-type]
                 for p in ("a", "b", "c")}

    class FakePool:
        name = "fake"

    pipeline = RoutingPipeline([Named("one", log), Pick(FakePool(), models)],
                               providers=providers, clock=lambda: 42.0)
    pipeline.add_stage(AsyncDropFirst())
    pipeline.add_stage(Named("two", log))
    result = await pipeline.execute(PipelineRequest(capability="anything"))
    assert result.stages_executed == ["one", "pick", "async-drop-first", "two"]
    assert log == ["one", "two"]
    assert result.model.id == "b.m"
    assert result.provider.name == "b"
    assert [m.id for m in result.fallback_chain] == ["c.m"]
    assert result.dropped == {"a.m": "dropped by async stage"}
    assert result.context is not None and result.context.now == 42.0


async def test_pipeline_without_a_selection_raises_no_active_model() -> None:
    pipeline = RoutingPipeline([Named("only", [])])
    with pytest.raises(NoActiveModelError):
        await pipeline.execute(PipelineRequest(capability="chat"))


# --------------------------------------------------------------------------- mesh pipeline


async def test_default_pipeline_and_stages_executed(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, mock_config())
    assert mesh.pipeline.stage_names() == DEFAULT_STAGES
    assert mesh.router.pipeline is mesh.pipeline
    result = await mesh.pipeline.execute(PipelineRequest(capability="chat-completion"))
    assert result.stages_executed == DEFAULT_STAGES
    explained = await mesh.router.explain("chat-completion", CompletionRequest(messages=HI))
    assert explained["stages"] == DEFAULT_STAGES
    assert explained["selected"] == "mock.mock-chat"


class PreferLast:
    """Custom sync stage: move the last candidate to the front."""

    name = "prefer-last"

    def __init__(self) -> None:
        self.calls = 0

    def process(self, context: PipelineContext) -> PipelineContext:
        self.calls += 1
        if context.candidates:
            context.candidates = [context.candidates[-1], *context.candidates[:-1]]
            context.selected_model = context.candidates[0]
        return context


class AsyncVeto:
    """Custom async stage: drop one provider's models."""

    name = "async-veto"

    def __init__(self, provider: str) -> None:
        self.provider = provider

    async def process(self, context: PipelineContext) -> PipelineContext:
        keep = []
        for m in context.candidates:
            if m.provider == self.provider:
                context.dropped[m.id] = f"vetoed provider {self.provider}"
            else:
                keep.append(m)
        context.candidates = keep
        return context


async def test_custom_sync_and_async_stages_inserted_from_code(make_mesh: Any) -> None:
    cfg = mock_config(providers=("a", "b", "c"))
    cfg["pools"] = {"chat": {"capability": "chat-completion"}}
    mesh = await mesh_of(make_mesh, cfg)
    assert (await mesh.router.route("chat")).model_id == "a.mock-chat"

    last = PreferLast()
    names = mesh.pipeline.stage_names()
    mesh.pipeline.add_stage(last, position=names.index("retry-policy"))
    mesh.pipeline.add_stage(AsyncVeto("c"), position=names.index("selection-strategy"))
    assert mesh.pipeline.stage_names() == [
        "capability-resolver", "pool-selection", "delivery-filter", "state-filter",
        "async-veto", "selection-strategy", "prefer-last", "retry-policy"]

    decision = await mesh.router.route("chat")
    assert decision.model_id == "b.mock-chat"
    assert decision.fallback_chain == ["a.mock-chat"]
    assert decision.reasons == {"c.mock-chat": "vetoed provider c"}
    response = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert response.model == "b.mock-chat"
    assert last.calls == 2

    mesh.pipeline.remove_stage("prefer-last")
    mesh.pipeline.remove_stage("async-veto")
    assert mesh.pipeline.stage_names() == DEFAULT_STAGES
    assert (await mesh.router.route("chat")).model_id == "a.mock-chat"


class StagePlugin:
    """An embedded plugin registering two stages through ``modelmesh_stages``."""

    def __init__(self) -> None:
        self.built: list[Any] = []

    @hookimpl
    def modelmesh_stages(self) -> list[StageSpec]:
        def veto(config: Any, services: Any) -> AsyncVeto:
            stage = AsyncVeto(config.get("provider", "a") if config else "a")
            self.built.append(stage)
            return stage

        def prefer_last(config: Any, services: Any) -> PreferLast:
            stage = PreferLast()
            self.built.append(stage)
            return stage

        return [
            StageSpec(name="test.veto", factory=veto, order=450, config_type=dict),
            StageSpec(name="test.prefer-last", factory=prefer_last, order=550),
        ]


def stage_config(*stages: dict[str, Any]) -> dict[str, Any]:
    cfg = mock_config(providers=("a", "b", "c"))
    cfg["pools"] = {"chat": {"capability": "chat-completion"}}
    cfg["plugins"]["stages"] = list(stages)
    return cfg


async def test_registered_stages_join_the_pipeline_at_their_order(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, stage_config(), StagePlugin())
    assert mesh.pipeline.stage_names() == [
        "capability-resolver", "pool-selection", "delivery-filter", "state-filter",
        "test.veto", "selection-strategy", "test.prefer-last", "retry-policy"]
    decision = await mesh.router.route("chat")
    assert decision.model_id == "c.mock-chat"
    assert decision.reasons == {"a.mock-chat": "vetoed provider a"}


async def test_stages_reordered_and_disabled_from_config(make_mesh: Any) -> None:
    cfg = stage_config(
        {"name": "test.prefer-last", "enabled": False},
        {"name": "test.veto", "order": 150, "config": {"provider": "b"}},
    )
    mesh = await mesh_of(make_mesh, cfg, StagePlugin())
    names = mesh.pipeline.stage_names()
    assert "test.prefer-last" not in names
    # Before pool-selection the veto sees no candidates: nothing is dropped.
    assert names[:3] == ["capability-resolver", "test.veto", "pool-selection"]
    decision = await mesh.router.route("chat")
    assert decision.model_id == "a.mock-chat"
    assert decision.reasons == {}


async def test_builtin_stage_disabled_and_replaced_from_config(
    make_mesh: Any, manual_clock: Any
) -> None:
    cfg = stage_config(
        {"name": "state-filter", "enabled": False},
        {"name": "retry-policy", "connector": "test.veto", "config": {"provider": "b"}},
        {"name": "test.prefer-last", "enabled": False},
        {"name": "test.veto", "enabled": False},
    )
    plugin = StagePlugin()
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), plugin], clock=manual_clock)
    assert mesh.pipeline.stage_names() == [
        "capability-resolver", "pool-selection", "delivery-filter", "selection-strategy",
        "retry-policy"]
    replaced = mesh.pipeline.get_stages()[-1]
    assert isinstance(replaced, AsyncVeto) and replaced.provider == "b"
    # Without the state filter, a model in standby is still chosen.
    mesh.deactivate("a.mock-chat")
    decision = await mesh.router.route("chat")
    assert decision.model_id == "a.mock-chat"
    assert decision.fallback_chain == ["c.mock-chat"]
    assert decision.reasons == {"b.mock-chat": "vetoed provider b"}


async def test_custom_stage_inserted_from_config_under_a_new_name(make_mesh: Any) -> None:
    cfg = stage_config({"name": "veto-c", "connector": "test.veto", "order": 460,
                        "config": {"provider": "c"}})
    mesh = await mesh_of(make_mesh, cfg, StagePlugin())
    names = mesh.pipeline.stage_names()
    assert names.index("test.veto") < names.index("veto-c") < names.index("selection-strategy")
    decision = await mesh.router.route("chat")
    # test.veto drops a, veto-c drops c, prefer-last picks the last survivor (b).
    assert decision.model_id == "b.mock-chat"
    assert set(decision.reasons) == {"a.mock-chat", "c.mock-chat"}


# --------------------------------------------------------------------------- capability resolver


def resolver_config() -> dict[str, Any]:
    cfg = mock_config(providers=("a", "b", "c"))
    cfg["pools"] = {
        "gen": {"capability": "generation"},
        "chat": {"capability": "chat-completion", "providers": ["a", "b"]},
        "chat-hi": {"capability": "chat-completion", "providers": ["c"], "priority": 5},
        "chat-completion": {"models": ["b.mock-chat"]},
    }
    return cfg


async def test_resolver_exact_pool_name_beats_alias(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, resolver_config())
    decision = await mesh.router.route("chat-completion")
    assert decision.pool_id == "chat-completion"
    assert decision.model_id == "b.mock-chat"
    assert (await mesh.router.route("chat")).pool_id == "chat"


async def test_resolver_concrete_model_id(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, resolver_config())
    decision = await mesh.router.route("c.mock-chat")
    assert (decision.model_id, decision.pool_id) == ("c.mock-chat", "c.mock-chat")
    assert decision.fallback_chain == []
    response = await mesh.router.complete("a.mock-chat", CompletionRequest(messages=HI))
    assert response.model == "a.mock-chat"


async def test_resolver_dotted_path_most_specific_then_priority(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, resolver_config())
    # chat-hi and chat are equally specific; chat-hi has the higher priority.
    decision = await mesh.router.route(CHAT)
    assert decision.pool_id == "chat-hi"
    assert decision.model_id == "c.mock-chat"
    # text-generation is only covered by gen.
    decision = await mesh.router.route("generation.text-generation")
    assert decision.pool_id == "gen"
    assert decision.model_id == "a.mock-chat"
    explained = await mesh.router.explain("text-generation")
    assert explained["capability_path"] == "generation.text-generation"
    assert explained["pool"] == "gen"


async def test_resolver_alias_and_preferred_provider(make_mesh: Any) -> None:
    cfg = resolver_config()
    del cfg["pools"]["chat-completion"]
    mesh = await mesh_of(make_mesh, cfg)
    assert (await mesh.router.route("chat-completion")).pool_id == "chat-hi"
    # A preferred provider picks the pool that has it, and its model goes first.
    decision = await mesh.router.route("chat-completion",
                                       RoutingOptions(preferred_provider="b"))
    assert decision.pool_id == "chat"
    assert decision.model_id == "b.mock-chat"
    assert decision.fallback_chain == ["a.mock-chat"]
    decision = await mesh.router.route("gen", RoutingOptions(preferred_provider="c"))
    assert decision.model_id == "c.mock-chat"


async def test_unknown_capability_has_did_you_mean(make_mesh: Any) -> None:
    mesh = await mesh_of(make_mesh, resolver_config())
    with pytest.raises(CapabilityNotFoundError) as exc:
        await mesh.router.route("chat-compleiton")
    assert "did you mean" in str(exc.value)
    assert "chat-completion" in str(exc.value)
    with pytest.raises(CapabilityNotFoundError, match="no pool or model serves"):
        await mesh.router.route("speech-to-text")
    # "gen" covers text-to-speech but none of its members serves it.
    with pytest.raises(NoActiveModelError, match="'gen'"):
        await mesh.router.route("text-to-speech")


# --------------------------------------------------------------------------- pools


async def test_pool_modes(make_mesh: Any) -> None:
    cfg = mock_config(providers=("a", "b"))
    cfg["pools"] = {
        "by-capability": {"capability": "chat-completion"},
        "explicit": {"models": ["b.mock-chat", "a.mock-chat"]},
        "hybrid": {"capability": "chat-completion", "models": ["a.mock-embed"],
                   "excluded_providers": ["a"]},
    }
    mesh = await mesh_of(make_mesh, cfg)
    pools = {p.name: p for p in mesh.router.list_pools()}
    assert pools["by-capability"].mode == "capability"
    assert pools["by-capability"].model_ids == ["a.mock-chat", "b.mock-chat"]
    assert pools["explicit"].mode == "explicit"
    assert pools["explicit"].capability is None
    assert pools["explicit"].model_ids == ["b.mock-chat", "a.mock-chat"]
    assert pools["hybrid"].mode == "hybrid"
    assert pools["hybrid"].model_ids == ["a.mock-embed", "b.mock-chat"]
    assert (await mesh.router.route("explicit")).model_id == "b.mock-chat"
    # Asking a hybrid pool for chat narrows it to its chat members.
    assert (await mesh.router.route("hybrid")).model_id == "a.mock-embed"
    with pytest.raises(KeyError):
        mesh.router.get_pool("nope")


async def test_pool_provider_filters(make_mesh: Any) -> None:
    cfg = mock_config(providers=("a", "b", "c"))
    cfg["pools"] = {
        "only-b": {"capability": "chat-completion", "providers": ["b"]},
        "not-a": {"capability": "chat-completion", "excluded_providers": ["a"]},
        "b-not-b": {"capability": "chat-completion", "providers": ["b", "c"],
                    "excluded_providers": ["b"]},
    }
    mesh = await mesh_of(make_mesh, cfg)
    assert mesh.router.get_pool("only-b").model_ids == ["b.mock-chat"]
    assert mesh.router.get_pool("not-a").model_ids == ["b.mock-chat", "c.mock-chat"]
    assert mesh.router.get_pool("b-not-b").model_ids == ["c.mock-chat"]
    decision = await mesh.router.route("not-a")
    assert (decision.model_id, decision.fallback_chain) == ("b.mock-chat", ["c.mock-chat"])


async def test_implicit_pools_when_no_pool_covers_a_capability(make_mesh: Any) -> None:
    cfg = mock_config(providers=("a", "b"))
    cfg["pools"] = {"embed": {"capability": "text-embeddings"}}
    mesh = await mesh_of(make_mesh, cfg)
    pools = {p.name: p for p in mesh.router.list_pools()}
    assert pools["embed"].mode == "capability"
    implicit = [p for p in pools.values() if p.mode == "implicit"]
    assert [(p.name, p.capability) for p in implicit] == [("chat-completion", CHAT)]
    assert implicit[0].model_ids == ["a.mock-chat", "b.mock-chat"]
    decision = await mesh.router.route("chat-completion")
    assert (decision.pool_id, decision.model_id) == ("chat-completion", "a.mock-chat")
    assert (await mesh.router.route(CHAT)).pool_id == "chat-completion"
    assert (await mesh.router.route("embeddings")).pool_id == "embed"


# --------------------------------------------------------------------------- delivery filter


def delivery_config() -> dict[str, Any]:
    cfg = mock_config(providers=("p",))
    cfg["models"] = {
        "p.sync-only": {"capabilities": ["chat-completion"], "delivery_modes": ["sync"],
                        "features": ["tool_calling", "vision", "structured_output"]},
        "p.no-tools": {"capabilities": ["chat-completion"],
                       "features": ["vision", "structured_output"]},
        "p.no-vision": {"capabilities": ["chat-completion"],
                        "features": ["tool_calling", "structured_output"]},
        "p.no-schema": {"capabilities": ["chat-completion"],
                        "features": ["tool_calling", "vision", "json_mode"]},
        "p.small": {"capabilities": ["chat-completion"], "context_window": 50,
                    "features": ["tool_calling", "vision", "structured_output"]},
    }
    cfg["pools"] = {"chat": {"capability": "chat-completion",
                             "retry": {"max_attempts": 10}}}
    return cfg


async def test_delivery_filter_drops_models_lacking_what_the_request_needs(
    make_mesh: Any
) -> None:
    mesh = await mesh_of(make_mesh, delivery_config())
    everything = ["p.sync-only", "p.no-tools", "p.no-vision", "p.no-schema", "p.small"]
    decision = await mesh.router.route("chat", request=CompletionRequest(messages=HI))
    assert [decision.model_id, *decision.fallback_chain] == everything

    async def survivors(request: CompletionRequest,
                        options: RoutingOptions | None = None) -> tuple[list[str], dict[str, str]]:
        d = await mesh.router.route("chat", options, request)
        return [d.model_id, *d.fallback_chain], d.reasons

    kept, why = await survivors(CompletionRequest(messages=HI),
                                RoutingOptions(delivery_mode="streaming"))
    assert "p.sync-only" not in kept
    assert why == {"p.sync-only": "does not support streaming delivery"}

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    kept, why = await survivors(CompletionRequest(messages=HI, tools=tools))
    assert why == {"p.no-tools": "lacks feature tool_calling"}

    image = [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    kept, why = await survivors(CompletionRequest(messages=image))
    assert set(why) == {"p.no-vision", "p.small"}
    assert why["p.no-vision"] == "lacks feature vision"
    assert "context window 50" in why["p.small"]

    schema = {"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                          "schema": {}}}}
    kept, why = await survivors(CompletionRequest(messages=HI, extra=schema))
    assert why == {"p.no-schema": "lacks feature structured_output"}

    long = [{"role": "user", "content": "word " * 200}]
    kept, why = await survivors(CompletionRequest(messages=long))
    assert set(why) == {"p.small"}
    assert "too small" in why["p.small"]
    kept, why = await survivors(CompletionRequest(messages=HI, max_tokens=100))
    assert set(why) == {"p.small"}


async def test_no_active_model_lists_why_each_candidate_was_dropped(make_mesh: Any) -> None:
    cfg = delivery_config()
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k != "p.sync-only"}
    mesh = await mesh_of(make_mesh, cfg)
    mesh.deactivate("p.no-schema", "maintenance")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = CompletionRequest(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x " * 150}, image]}],
        tools=tools)
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.route("chat", request=request)
    reasons = exc.value.reasons
    assert set(reasons) == {"p.no-tools", "p.no-vision", "p.no-schema", "p.small"}
    assert reasons["p.no-tools"] == "lacks feature tool_calling"
    assert reasons["p.no-vision"] == "lacks feature vision"
    assert "standby (maintenance)" in reasons["p.no-schema"]
    assert "context window" in reasons["p.small"]
    message = str(exc.value)
    for mid in reasons:
        assert mid in message
    assert "'chat'" in message


# --------------------------------------------------------------------------- retry policy stage


def scope_config(scope: str, max_attempts: int = 4) -> dict[str, Any]:
    cfg = mock_config(providers=("a", "b"))
    cfg["models"] = chat_models("a.one", "a.two", "b.one", "b.two")
    cfg["pools"] = {"chat": {"capability": "chat-completion",
                             "retry": {"scope": scope, "max_attempts": max_attempts}}}
    return cfg


@pytest.mark.parametrize(
    ("scope", "max_attempts", "chain"),
    [
        ("any", 4, ["a.two", "b.one", "b.two"]),
        ("any", 2, ["a.two"]),
        ("same_provider", 4, ["a.two"]),
        ("same_model", 4, []),
    ],
)
async def test_retry_policy_scopes(make_mesh: Any, scope: str, max_attempts: int,
                                   chain: list[str]) -> None:
    mesh = await mesh_of(make_mesh, scope_config(scope, max_attempts))
    decision = await mesh.router.route("chat")
    assert decision.model_id == "a.one"
    assert decision.fallback_chain == chain


async def test_same_provider_scope_does_not_fail_over_to_another_provider(make_mesh: Any) -> None:
    plugin = MockPlugin()
    mesh = await make_mesh(scope_config("same_provider"), plugins=[plugin])

    plugin.adapters["a"].script(
        ProviderError("down", status=503, retryable=True),
        ProviderError("down", status=503, retryable=True),
    )
    with pytest.raises(AllProvidersExhaustedError) as exc:
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert [m for m, _ in exc.value.attempts] == ["a.one", "a.two"]
    assert plugin.adapters["b"].calls == []


async def test_a_filter_plugin_gets_its_own_config(make_mesh: Any) -> None:
    import attrs as _attrs

    from modelmesh_core import ConfigError, FilterSpec, hookimpl

    @_attrs.frozen(kw_only=True)
    class BlockConfig:
        providers: tuple[str, ...] = ()

    class Block:
        def __init__(self, config: BlockConfig, services: Any) -> None:
            self.blocked = frozenset(config.providers)

        def reason(self, model: Any, context: Any) -> str | None:
            return "blocked by policy" if model.provider in self.blocked else None

    class Plugin:
        @hookimpl
        def modelmesh_filters(self) -> list[FilterSpec]:
            return [FilterSpec(name="acme.block", stage="state-filter", factory=Block,
                               config_type=BlockConfig)]

    cfg = mock_config(("a", "b"))
    cfg["plugins"]["filters"] = ["modelmesh.model-state",
                                 {"connector": "acme.block", "config": {"providers": ["a"]}}]
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), Plugin()])
    decision = await mesh.router.route("chat-completion")
    assert decision.model_id == "b.mock-chat"
    assert decision.reasons == {"a.mock-chat": "blocked by policy"}

    cfg["plugins"]["filters"][1]["config"] = {"provider": ["a"]}
    with pytest.raises(ConfigError) as info:
        await make_mesh(cfg, plugins=[MockPlugin(), Plugin()])
    assert any(e.startswith("plugins.filters.1.config.provider: unknown key")
               for e in info.value.errors)
