"""The Prometheus and webhook sinks for applications that embed ModelMesh: metrics read back
from the application's registry after real requests through a mesh against fake upstreams
(failover, status class and reason labels, hot reload), and a webhook receiver on 127.0.0.1
that fails the first posts (retries, batching, HMAC signature, bounded queue, drain on close)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from modelmesh_core import CompletionRequest, ConfigError, ModelMesh
from modelmesh_core.builtin.sinks import (
    PrometheusConfig,
    PrometheusSink,
    WebhookConfig,
    WebhookSink,
    failover_reason,
    status_class,
)
from modelmesh_core.events import Event, EventType
from modelmesh_core.fakes import Fail
from modelmesh_core.redaction import register_secret

HI = [{"role": "user", "content": "hi"}]


def two_providers(a: Any, b: Any, sinks: list[dict[str, Any]]) -> dict[str, Any]:
    providers = {name: {"connector": "openai.llm.v1",
                        "config": {"base_url": fake.base_url, "api_key": "sk-test-0000000000"}}
                 for name, fake in (("a", a), ("b", b))}
    return {
        "providers": providers,
        "models": {"a.gpt-4o-mini": {"capabilities": ["chat-completion"]},
                   "b.gpt-4o-mini": {"capabilities": ["chat-completion"]}},
        "pools": {"chat": {"capability": "chat-completion",
                           "strategy": {"connector": "priority-selection",
                                        "config": {"model_priority": ["a.gpt-4o-mini",
                                                                      "b.gpt-4o-mini"]}}}},
        "observability": {"sinks": sinks},
        "discovery": {"auto_detect": False},
    }


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(("error", "status", "reason", "klass"), [
    ("RateLimitError", 429, "rate_limit", "4xx"),
    ("ProviderError", 503, "server_error", "5xx"),
    ("ProviderTimeoutError", None, "timeout", "none"),
    ("StreamInterruptedError", None, "stream_interrupted", "none"),
    ("AuthenticationError", 401, "auth", "4xx"),
    ("ProviderError", 404, "client_error", "4xx"),
    ("ProviderError", None, "transport", "none"),
])
def test_failure_labels(error: str, status: int | None, reason: str, klass: str) -> None:
    assert failover_reason(error, status) == reason
    assert status_class(status) == klass


# --------------------------------------------------------------------------- Prometheus


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_prometheus_metrics_after_real_requests(fake_upstream: Any,
                                                      make_mesh: Any) -> None:
    a = await fake_upstream(default=Fail(503))
    b = await fake_upstream()
    registry = CollectorRegistry()
    cfg = two_providers(a, b, [{"connector": "modelmesh.prometheus.v1",
                                "config": {"registry": registry}}])
    mesh: ModelMesh = await make_mesh(cfg)
    for _ in range(2):
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    a.default = Fail(400)  # the caller's error: answered as such, no failover
    with pytest.raises(Exception, match="400"):
        await mesh.router.complete("chat", CompletionRequest(messages=HI))

    b_labels = {"pool": "chat", "model": "b.gpt-4o-mini", "provider": "b"}
    a_labels = {"pool": "chat", "model": "a.gpt-4o-mini", "provider": "a"}
    assert sample(registry, "modelmesh_requests_total", **b_labels, outcome="success") == 2
    assert sample(registry, "modelmesh_requests_total", pool="chat", model="", provider="",
                  outcome="failure") == 1
    # the first two requests each failed on a with a 503 and moved to b
    assert sample(registry, "modelmesh_attempt_failures_total", **a_labels,
                  error="ProviderError", status_class="5xx", reason="server_error") == 2
    assert sample(registry, "modelmesh_failovers_total", pool="chat", model="a.gpt-4o-mini",
                  reason="server_error") == 2
    assert sample(registry, "modelmesh_attempt_failures_total", **a_labels,
                  error="ProviderError", status_class="4xx", reason="client_error") == 1
    assert sample(registry, "modelmesh_failovers_total", pool="chat", model="a.gpt-4o-mini",
                  reason="client_error") is None
    assert len(b.calls) == 2
    assert sample(registry, "modelmesh_request_latency_seconds_count", **b_labels) == 2
    prompt = sample(registry, "modelmesh_tokens_total", **b_labels, kind="prompt")
    assert prompt is not None and prompt > 0
    text = generate_latest(registry).decode()
    for family in ("modelmesh_requests_total", "modelmesh_attempt_failures_total",
                   "modelmesh_failovers_total", "modelmesh_request_latency_seconds_bucket",
                   "modelmesh_tokens_total", "modelmesh_rotations_total"):
        assert family in text, family

    # a hot reload builds a new sink on the same registry: no duplicate-metric error, and the
    # counters go on
    a.default = Fail(503)
    await mesh.reload_config(cfg)
    await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert sample(registry, "modelmesh_requests_total", **b_labels, outcome="success") == 3


async def test_prometheus_counts_a_rate_limit_failover(fake_upstream: Any,
                                                       make_mesh: Any) -> None:
    a = await fake_upstream()
    b = await fake_upstream()
    a.script(Fail.rate_limit(retry_after=None))
    registry = CollectorRegistry()
    mesh = await make_mesh(two_providers(a, b, [{"connector": "modelmesh.prometheus.v1",
                                                 "config": {"registry": registry}}]))
    await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert (len(a.calls), len(b.calls)) == (1, 1)
    assert sample(registry, "modelmesh_attempt_failures_total", pool="chat",
                  model="a.gpt-4o-mini", provider="a", error="RateLimitError",
                  status_class="4xx", reason="rate_limit") == 1
    assert sample(registry, "modelmesh_failovers_total", pool="chat", model="a.gpt-4o-mini",
                  reason="rate_limit") == 1
    # a request that succeeds first time is no failover
    await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert sample(registry, "modelmesh_failovers_total", pool="chat", model="a.gpt-4o-mini",
                  reason="rate_limit") == 1


def test_prometheus_registry_by_import_path_and_errors() -> None:
    sink = PrometheusSink(PrometheusConfig(registry=f"{__name__}:IMPORTED_REGISTRY"))
    assert sink.registry is IMPORTED_REGISTRY
    sink.emit(Event(type=EventType.PROVIDER_DOWN, timestamp=0.0, provider="p"))
    assert IMPORTED_REGISTRY.get_sample_value("modelmesh_provider_down_total",
                                              {"provider": "p"}) == 1
    with pytest.raises(ConfigError, match="must be a prometheus_client CollectorRegistry"):
        PrometheusSink(PrometheusConfig(registry=f"{__name__}:HI"))
    with pytest.raises(ConfigError, match=r"cannot import 'nowhere\.at\.all:REG'"):
        PrometheusSink(PrometheusConfig(registry="nowhere.at.all:REG"))


IMPORTED_REGISTRY = CollectorRegistry()


# --------------------------------------------------------------------------- webhook


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers ``fail_first`` posts with 503."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.fail_first = fail_first
        self.status = status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.hold: asyncio.Event | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.hold is not None:
            await self.hold.wait()
        if len(self.posts) <= self.fail_first:
            return web.json_response({"error": "try later"}, status=self.status)
        return web.json_response({"ok": True})

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    def events(self, ok_only: bool = True) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, (_, body) in enumerate(self.posts):
            if ok_only and i < self.fail_first:
                continue
            out.extend(orjson.loads(body)["events"])
        return out


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        r = await Receiver(**kwargs).start()
        started.append(r)
        return r

    yield make
    for r in started:
        if r.hold is not None:
            r.hold.set()
        assert r.runner is not None
        await r.runner.cleanup()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_webhook_retries_a_failing_receiver_and_signs(
        fake_upstream: Any, receiver: Any) -> None:
    hook = await receiver(fail_first=2)
    up = await fake_upstream()
    secret = "whsec-test-5b1f0e2a"
    cfg = two_providers(up, up, [{"connector": "modelmesh.webhook.v1", "config": {
        "url": hook.url, "secret": secret, "batch_size": 50, "flush_interval": "50ms",
        "initial_backoff": "10ms", "max_backoff": "50ms", "headers": {"X-Team": "ops"},
        "events": ["request.succeeded", "request.failed"]}}])
    async with ModelMesh(cfg) as mesh:
        for _ in range(3):
            await mesh.router.complete("chat", CompletionRequest(messages=HI))
        await wait_for(lambda: len(hook.posts) >= 3)
    # the first two posts got 503 and were retried: the same batch each time
    assert len(hook.posts) == 3
    deliveries = {h["x-modelmesh-delivery"] for h, _ in hook.posts}
    assert len(deliveries) == 1
    assert hook.posts[0][1] == hook.posts[2][1]
    events = hook.events()
    assert [e["type"] for e in events] == ["request.succeeded"] * 3
    assert {e["pool"] for e in events} == {"chat"}
    assert all(e["data"]["usage"]["prompt_tokens"] > 0 for e in events)
    for headers, body in hook.posts:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-modelmesh-signature"] == f"sha256={expected}"
        assert headers["content-type"] == "application/json"
        assert headers["x-team"] == "ops"
        assert secret.encode() not in body


async def test_webhook_batches_and_counts(receiver: Any) -> None:
    hook = await receiver()
    sink = WebhookSink(WebhookConfig(url=hook.url, batch_size=4, flush_interval=5.0))
    for i in range(8):
        sink.emit(Event(type="request.succeeded", timestamp=float(i), pool="p"))
    # two full batches go out without waiting for the flush interval
    await wait_for(lambda: len(hook.posts) == 2, timeout=2.0)
    assert [len(orjson.loads(b)["events"]) for _, b in hook.posts] == [4, 4]
    assert "x-modelmesh-signature" not in hook.posts[0][0]  # no secret, no signature
    sink.emit(Event(type="request.failed", timestamp=9.0))
    await sink.close()  # drains the partial batch
    assert [e["timestamp"] for e in hook.events()] == [float(i) for i in range(8)] + [9.0]
    assert sink.stats == {"sent": 9, "dropped": 0, "failed": 0, "retries": 0, "batches": 3,
                          "queued": 0}


async def test_webhook_queue_is_bounded_and_never_blocks(receiver: Any) -> None:
    hook = await receiver()
    hook.hold = asyncio.Event()  # the receiver hangs: nothing is acknowledged
    sink = WebhookSink(WebhookConfig(url=hook.url, batch_size=10, max_queue=100,
                                     flush_interval=0.01, drain_timeout=0.2))
    sink.emit(Event(type="x", timestamp=0.0))
    await wait_for(lambda: len(hook.posts) == 1)  # that one is in flight, stuck
    t0 = time.perf_counter()
    for i in range(150):
        sink.emit(Event(type="x", timestamp=float(i)))
    elapsed = time.perf_counter() - t0
    assert sink.dropped == 50 and sink.stats["queued"] == 100
    assert elapsed < 0.05  # 150 emits while the network is stuck: no waiting
    await sink.close()  # gives up after drain_timeout; what was queued counts as dropped
    assert sink.dropped == 150 and sink.stats["queued"] == 0
    sink.emit(Event(type="x", timestamp=0.0))  # after close: dropped, not queued
    assert sink.dropped == 151


async def test_webhook_gives_up_after_retries_and_on_a_refusal(receiver: Any) -> None:
    hook = await receiver(fail_first=100)
    sink = WebhookSink(WebhookConfig(url=hook.url, batch_size=1, flush_interval=0.01,
                                     max_retries=2, initial_backoff=0.001, max_backoff=0.01))
    sink.emit(Event(type="x", timestamp=1.0))
    await wait_for(lambda: sink.failed == 1)
    assert len(hook.posts) == 3 and sink.retries == 2

    refused = await receiver(fail_first=100, status=400)
    sink2 = WebhookSink(WebhookConfig(url=refused.url, batch_size=1, flush_interval=0.01,
                                      initial_backoff=0.001))
    sink2.emit(Event(type="x", timestamp=1.0))
    await wait_for(lambda: sink2.failed == 1)
    assert len(refused.posts) == 1 and sink2.retries == 0  # a 400 is not retried
    await sink.close()
    await sink2.close()


async def test_webhook_redacts_secrets_and_checks_its_config(receiver: Any) -> None:
    hook = await receiver()
    leaked = "sk-live-should-never-leave-9911"
    register_secret(leaked)
    sink = WebhookSink(WebhookConfig(url=hook.url, flush_interval=0.01))
    sink.emit(Event(type="request.failed", timestamp=1.0, data={"message": f"bad {leaked}"}))
    await sink.close()
    assert leaked.encode() not in hook.posts[0][1]
    assert hook.events()[0]["data"]["message"] == "bad ***"
    with pytest.raises(ConfigError) as info:
        ModelMesh({"observability": {"sinks": [{"connector": "modelmesh.webhook.v1",
                                                "config": {"url": "ftp://x", "batch_size": 0}}]},
                   "discovery": {"auto_detect": False}}).validate()
    assert info.value.errors == ["observability.sinks.0.config: batch_size: must be at least "
                                 "1; url: must be an http:// or https:// URL"]
