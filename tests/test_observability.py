"""The request log (levels, redaction, caps) and the seed contract of Router / RoutingPipeline."""

from __future__ import annotations

import inspect
from typing import Any

import attrs
import pytest

from modelmesh_core import CompletionRequest, RoutingPipeline
from modelmesh_core.errors import NoActiveModelError, ProviderError
from modelmesh_core.events import Event, EventType
from modelmesh_core.testing import MockPlugin, mock_config
from modelmesh_core.types import (
    BatchJob,
    CompletionResponse,
    PipelineContext,
    PipelineRequest,
    PipelineResult,
    RoutingDecision,
    RoutingOptions,
)

SECRET = "sk-live-abcdefghijklmnop1234"


def request(text: str = "hello") -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": text}])


async def logged(make_mesh: Any, level: str, *script: Any, **log: Any) -> tuple[Any, list[Event]]:
    cfg = mock_config(("a", "b"), responses=("The answer is 42, " + "x" * 400,))
    cfg["observability"] = {"request_log": {"level": level, **log}}
    plugin = MockPlugin()
    mesh = await make_mesh(cfg, plugins=[plugin])
    plugin.adapters["a"].script(*script)
    seen: list[Event] = []
    mesh.events.subscribe(seen.append)
    return mesh, seen


def records(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == EventType.REQUEST_LOG]


async def test_metadata_level_has_no_payload(make_mesh: Any) -> None:
    mesh, seen = await logged(make_mesh, "metadata", ProviderError("boom", status=503,
                                                                   retryable=True))
    await mesh.router.complete("chat-completion", request(f"my key is {SECRET}"))
    (rec,) = records(seen)
    assert rec.model == "b.mock-chat" and rec.pool == "chat-completion"
    assert rec.data["attempts"] == 2 and rec.data["outcome"] == "ok"
    assert rec.data["kind"] == "complete" and rec.data["name"] == "chat-completion"
    assert rec.data["prompt_tokens"] > 0 and rec.data["latency_ms"] > 0
    assert "prompt_preview" not in rec.data and "messages" not in rec.data


async def test_summary_and_full_levels_are_redacted_and_capped(make_mesh: Any) -> None:
    mesh, seen = await logged(make_mesh, "summary")
    await mesh.router.complete("chat-completion", request(f"my key is {SECRET}"))
    (rec,) = records(seen)
    assert rec.data["prompt_preview"] == "my key is ***"
    assert rec.data["response_preview"].startswith("The answer is 42")
    assert len(rec.data["response_preview"]) < 260
    mesh, seen = await logged(make_mesh, "full", max_payload_chars=100)
    await mesh.router.complete("chat-completion", request(f"my key is {SECRET}"))
    (rec,) = records(seen)
    assert SECRET not in str(rec.data)
    assert rec.data["messages"].startswith('[{"role":"system"')
    assert rec.data["response"].endswith("more chars]")
    assert len(rec.data["response"]) < 130


async def test_failures_and_refusals_are_logged(make_mesh: Any) -> None:
    mesh, seen = await logged(make_mesh, "metadata",
                              ProviderError("bad request", status=400, retryable=False))
    with pytest.raises(ProviderError):
        await mesh.router.complete("chat-completion", request())
    (rec,) = records(seen)
    assert rec.data["outcome"] == "ProviderError" and "bad request" in rec.data["error"]
    for mid in ("a.mock-chat", "b.mock-chat"):
        mesh.deactivate(mid)
    with pytest.raises(NoActiveModelError):
        async for _ in mesh.router.stream("chat-completion", request()):
            pass
    assert records(seen)[-1].data["outcome"] == "NoActiveModelError"
    assert records(seen)[-1].data["kind"] == "stream"


async def test_off_level_and_no_sink_log_nothing(make_mesh: Any) -> None:
    mesh, seen = await logged(make_mesh, "off")
    await mesh.router.complete("chat-completion", request())
    assert records(seen) == [] and any(e.type == EventType.REQUEST_SUCCEEDED for e in seen)


async def test_router_and_pipeline_have_every_seed_member(make_mesh: Any) -> None:
    mesh, _ = await logged(make_mesh, "metadata")
    router = mesh.router
    for attr in ("_pipeline", "_pools", "_event_emitter", "_request_logger", "_observability"):
        assert getattr(router, attr) is not None, attr
    for method in ("route", "complete", "stream", "batch", "get_pool", "list_pools"):
        assert callable(getattr(router, method)), method
    assert inspect.isasyncgenfunction(router.stream)
    for method in ("execute", "add_stage", "remove_stage", "get_stages"):
        assert callable(getattr(RoutingPipeline, method)), method
    assert isinstance(mesh.pipeline._stages, list)
    seed_fields = {
        RoutingOptions: {"delivery_mode", "preferred_provider", "session_id", "metadata"},
        RoutingDecision: {"model_id", "provider_id", "pool_id", "score", "fallback_chain"},
        CompletionRequest: {"messages", "temperature", "max_tokens", "stream", "tools",
                            "metadata"},
        CompletionResponse: {"content", "model", "provider", "usage", "latency_ms",
                             "metadata"},
        BatchJob: {"job_id", "status", "model", "provider", "request_count"},
        PipelineContext: {"capability", "pool", "candidates", "delivery_mode",
                          "selected_model", "metadata"},
        PipelineRequest: {"capability", "delivery_mode", "preferred_provider", "session_id",
                          "metadata"},
        PipelineResult: {"model", "provider", "pool", "score", "fallback_chain",
                         "stages_executed"},
    }
    for cls, names in seed_fields.items():
        have = {a.name for a in attrs.fields(cls)}
        assert names <= have, (cls.__name__, names - have)
