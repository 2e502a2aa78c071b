"""End-to-end tests of the proxy: real HTTP on 127.0.0.1, fake upstreams, the official SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from modelmesh_core.config import (
    CorsConfig,
    ProxyAuthConfig,
    ProxyConfig,
    ProxyLimitsConfig,
    VirtualKeyConfig,
)
from modelmesh_core.fakes import CutStream, Fail, FakeUpstream, Reply, Silent, StallStream
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import SERVER_STATE, create_app, create_runner

MSG = [{"role": "user", "content": "hi"}]
ALPHA_KEY = "sk-alpha-test-0123456789"
BETA_KEY = "sk-beta-test-0123456789"


def mesh_config(a: FakeUpstream, b: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """Two providers in front of two fakes; pool ``chat`` tries alpha first."""
    config: dict[str, Any] = {
        "providers": {
            "alpha": {"connector": "openai.llm.v1",
                      "config": {"base_url": a.base_url, "api_key": ALPHA_KEY}},
            "beta": {"connector": "openai.llm.v1",
                     "config": {"base_url": b.base_url, "api_key": BETA_KEY}},
        },
        "models": {"alpha.gpt-4o-mini": {}, "beta.gpt-4o-mini": {},
                   "alpha.text-embedding-3-small": {}},
        "pools": {"chat": {"models": ["alpha.gpt-4o-mini", "beta.gpt-4o-mini"],
                           "retry": {"initial_delay": "1ms", "max_delay": "5ms",
                                     "max_retry_after": "100ms"}}},
    }
    config.update(extra)
    return config


class Proxy:
    """A running proxy: ``url``, ``base_url`` (for SDKs), ``app``, ``mesh``."""

    def __init__(self, app: web.Application, runner: web.AppRunner, mesh: ModelMesh) -> None:
        self.app = app
        self.runner = runner
        self.mesh = mesh
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.base_url = self.url + "/v1"

        self.clients: list[openai.AsyncOpenAI] = []

    @property
    def server(self) -> Any:
        return self.app[SERVER_STATE]

    def client(self, api_key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0,
                                    **kw)
        self.clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()


@contextlib.asynccontextmanager
async def running_proxy(config: dict[str, Any], proxy: ProxyConfig | None = None,
                        shutdown_timeout: float = 5.0) -> AsyncIterator[Proxy]:
    mesh = ModelMesh(config)
    app = create_app(mesh, proxy)
    runner = create_runner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        proxy = Proxy(app, runner, mesh)
        yield proxy
    finally:
        await proxy.close_clients()
        await runner.cleanup()


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream(api_keys={ALPHA_KEY}) as a, FakeUpstream(api_keys={BETA_KEY}) as b:
        yield a, b


@pytest.fixture
async def proxy(fakes: tuple[FakeUpstream, FakeUpstream]) -> AsyncIterator[Proxy]:
    async with running_proxy(mesh_config(*fakes)) as p:
        yield p


async def post_raw(proxy: Proxy, path: str, data: bytes | str,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s, s.post(proxy.url + path, data=data,
                                                     headers=headers or {}) as r:
        return r.status, await r.json(content_type=None), r.headers


def assert_error_shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    return err


# --------------------------------------------------------------------------- happy paths


async def test_chat_non_streaming_with_headers(proxy: Proxy,
                                               fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, _ = fakes
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="chat", messages=MSG, temperature=0.2, max_completion_tokens=20, top_p=0.5)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello from the fake upstream!"
    assert resp.model == "alpha.gpt-4o-mini"
    assert resp.usage is not None and resp.usage.total_tokens > 0
    assert raw.headers["x-modelmesh-model"] == "alpha.gpt-4o-mini"
    assert raw.headers["x-modelmesh-provider"] == "alpha"
    assert raw.headers["x-modelmesh-attempts"] == "1"
    assert raw.headers["x-modelmesh-pool"] == "chat"
    assert float(raw.headers["x-modelmesh-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"]
    sent = a.calls[-1].body
    assert sent["model"] == "gpt-4o-mini"
    assert sent["top_p"] == 0.5  # pass-through parameter reached the upstream
    assert a.calls[-1].api_key == ALPHA_KEY


async def test_sync_client_in_thread(proxy: Proxy) -> None:
    def call() -> str:
        with openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0) as client:
            out = client.chat.completions.create(model="alpha.gpt-4o-mini", messages=MSG)
            return out.choices[0].message.content or ""

    assert await asyncio.to_thread(call) == "Hello from the fake upstream!"


async def test_request_id_is_propagated(proxy: Proxy) -> None:
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="chat", messages=MSG, extra_headers={"x-request-id": "trace-42"})
    assert raw.headers["x-request-id"] == "trace-42"


async def test_streaming_with_usage(proxy: Proxy) -> None:
    stream = await proxy.client().chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True})
    assert stream.response.headers["x-modelmesh-model"] == "alpha.gpt-4o-mini"
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


async def test_streaming_without_usage_has_no_usage_chunk(proxy: Proxy) -> None:
    stream = await proxy.client().chat.completions.create(model="chat", messages=MSG,
                                                           stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_streaming_is_incremental(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, _ = fakes
    a.default = Reply("one two three four five six", chunk_delay=0.15)
    async with running_proxy(mesh_config(*fakes)) as proxy:
        stream = await proxy.client().chat.completions.create(model="chat", messages=MSG,
                                                               stream=True)
        arrivals = []
        async for _chunk in stream:
            arrivals.append(time.monotonic())
        # chunks arrive spread over time, not all at once at the end
        assert arrivals[-1] - arrivals[1] > 0.5


async def test_embeddings_base64_default_and_float(proxy: Proxy) -> None:
    client = proxy.client()
    default = await client.embeddings.create(model="alpha.text-embedding-3-small",
                                             input=["a", "b"])
    floats = await client.embeddings.create(model="alpha.text-embedding-3-small",
                                            input=["a", "b"], encoding_format="float")
    assert len(default.data) == 2
    assert default.model == "alpha.text-embedding-3-small"
    for x, y in zip(default.data, floats.data, strict=True):
        assert x.embedding == pytest.approx(y.embedding, rel=1e-6)
    assert len(floats.data[0].embedding) == 16


async def test_models_list_and_retrieve(proxy: Proxy) -> None:
    client = proxy.client()
    ids = [m.id for m in (await client.models.list()).data]
    assert ids[0] == "chat"
    assert {"chat", "alpha.gpt-4o-mini", "beta.gpt-4o-mini"} <= set(ids)
    model = await client.models.retrieve("beta.gpt-4o-mini")
    assert model.owned_by == "beta"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_legacy_completions(proxy: Proxy) -> None:
    out = await proxy.client().completions.create(model="chat", prompt="Say hi", max_tokens=5)
    assert out.object == "text_completion"
    assert out.choices[0].text == "Hello from the fake upstream!"
    stream = await proxy.client().completions.create(model="chat", prompt="x", stream=True)
    text = "".join([c.choices[0].text async for c in stream])
    assert text == "Hello from the fake upstream!"


async def test_tool_calls_round_trip(proxy: Proxy, fakes: tuple[FakeUpstream, FakeUpstream]
                                     ) -> None:
    from modelmesh_core.fakes import tool_call

    a, _ = fakes
    a.script(Reply("", tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="call_1")]))
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "parameters": {"type": "object"}}}]
    out = await proxy.client().chat.completions.create(model="chat", messages=MSG, tools=tools)
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    assert out.choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- failover & errors


async def test_failover_visible_in_headers(proxy: Proxy,
                                           fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    a.script(Fail(503))
    raw = await proxy.client().chat.completions.with_raw_response.create(model="chat",
                                                                         messages=MSG)
    assert raw.headers["x-modelmesh-attempts"] == "2"
    assert raw.headers["x-modelmesh-model"] == "beta.gpt-4o-mini"
    assert raw.parse().model == "beta.gpt-4o-mini"
    assert len(b.calls) == 1


async def test_all_rate_limited_is_429_with_retry_after(
        proxy: Proxy, fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    a.default = Fail.rate_limit(retry_after=7)
    b.default = Fail.rate_limit(retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        await proxy.client().chat.completions.create(model="chat", messages=MSG)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "rate_limit_exceeded"


async def test_all_failed_is_502_naming_providers(
        proxy: Proxy, fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    a.default = Fail(500)
    b.default = Fail(502)
    with pytest.raises(openai.APIStatusError) as info:
        await proxy.client().chat.completions.create(model="chat", messages=MSG)
    assert info.value.status_code == 502
    msg = info.value.message
    assert "alpha.gpt-4o-mini (provider alpha)" in msg
    assert "beta.gpt-4o-mini (provider beta)" in msg
    assert "HTTP 500" in msg and "HTTP 502" in msg
    assert ALPHA_KEY not in msg and BETA_KEY not in msg


async def test_upstream_auth_failure_is_502_and_never_leaks_key(
        fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    config = mesh_config(a, b)
    config["providers"]["alpha"]["config"]["api_key"] = "sk-wrong-key-abcdefghijkl"
    config["pools"]["chat"]["models"] = ["alpha.gpt-4o-mini"]
    async with running_proxy(config) as proxy:
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client().chat.completions.create(model="chat", messages=MSG)
        assert info.value.status_code == 502
        assert "sk-wrong-key-abcdefghijkl" not in info.value.response.text


async def test_timeouts_are_504(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    a.default = Silent()
    b.default = Silent()
    config = mesh_config(a, b, timeout={"first_byte": "200ms", "total": "2s"})
    async with running_proxy(config) as proxy:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await proxy.client().chat.completions.create(model="chat", messages=MSG)
        assert info.value.status_code == 504
        assert info.value.code == "upstream_timeout"
        assert time.monotonic() - started < 2.0


async def test_context_length_is_400(proxy: Proxy,
                                     fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = fakes
    # the router rotates on a context-length error (another model may have a bigger window)
    a.default = b.default = Fail.context_length()
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(model="chat", messages=MSG)
    assert info.value.code == "context_length_exceeded"


async def test_unknown_model_is_404_listing_models(proxy: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await proxy.client().chat.completions.create(model="chta", messages=MSG)
    assert info.value.code == "model_not_found"
    assert "chat" in info.value.message
    assert "alpha.gpt-4o-mini" in info.value.message


async def test_error_after_first_chunk_is_in_band(
        proxy: Proxy, fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, _ = fakes
    a.script(CutStream(after_chunks=3))
    # A named model is a pool of one: nobody can continue the stream, so the break is sent
    # in-band after the chunks that were delivered (tests/test_proxy_streams.py covers the
    # continuation of a pool's stream).
    stream = await proxy.client().chat.completions.create(model="alpha.gpt-4o-mini",
                                                           messages=MSG, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen.append(chunk)
    assert seen, "chunks before the break reach the client"
    assert "stream" in info.value.message.lower()

    a.script(CutStream(after_chunks=3))
    body = {"model": "alpha.gpt-4o-mini", "messages": MSG, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(proxy.base_url + "/chat/completions",
                                                     json=body) as r:
        text = await r.text()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    assert '"error"' in events[-1]
    assert "[DONE]" not in events


@pytest.mark.parametrize(
    "behaviour",
    [Reply(" ".join(["word"] * 400), chunk_delay=0.05),  # noticed on the next write
     StallStream(after_chunks=4),  # upstream goes quiet: only the disconnect watch notices
     Silent()],  # client leaves before the first chunk
    ids=["trickling", "stalled", "silent"],
)
async def test_client_disconnect_mid_stream_cancels_upstream(
        fakes: tuple[FakeUpstream, FakeUpstream], behaviour: Any) -> None:
    a, b = fakes
    a.default = behaviour
    async with running_proxy(mesh_config(*fakes)) as proxy:
        body = {"model": "chat", "messages": MSG, "stream": True}
        session = aiohttp.ClientSession()
        upstream_server = a._runner.server  # the fake's aiohttp Server: its open connections
        try:
            if isinstance(behaviour, Silent):
                with pytest.raises(asyncio.TimeoutError):
                    await session.post(proxy.base_url + "/chat/completions", json=body,
                                       timeout=aiohttp.ClientTimeout(total=0.5))
            else:
                resp = await session.post(proxy.base_url + "/chat/completions", json=body)
                assert resp.status == 200
                got = 0
                async for line in resp.content:
                    got += line.startswith(b"data: ")
                    if got >= 3:
                        break
                assert proxy.server.active_streams == 1
                resp.close()
            assert sum(h.transport is not None for h in upstream_server.connections) == 1
        finally:
            await session.close()

        def upstream_open() -> int:
            # a stalled fake handler outlives its connection; count live transports only
            return sum(h.transport is not None for h in upstream_server.connections)

        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (proxy.server.active_streams or upstream_open()):
            await asyncio.sleep(0.05)
        assert proxy.server.active_streams == 0, "the proxy stopped streaming"
        assert upstream_open() == 0, "the upstream connection was closed"
        assert len(a.calls) == 1 and not b.calls, "no retry after the client left"


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"", None, "empty"),
        (b'["a"]', None, "JSON object"),
        (b'{"model": "chat"}', "messages", "messages"),
        (b'{"model": "chat", "messages": "hi"}', "messages", "messages"),
        (b'{"model": "chat", "messages": [{"content": "x"}]}', "messages[0].role", "role"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}],'
         b' "temperature": "hot"}', "temperature", "temperature"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}],'
         b' "max_tokens": "10"}', "max_tokens", "max_tokens"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}],'
         b' "stream": "true"}', "stream", "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "model"),
    ],
)
async def test_malformed_chat_requests_are_400(proxy: Proxy, data: bytes, param: str | None,
                                               fragment: str) -> None:
    status, body, headers = await post_raw(proxy, "/v1/chat/completions", data,
                                           {"Content-Type": "application/json"})
    assert status == 400
    err = assert_error_shape(body)
    assert err["param"] == param
    assert fragment in err["message"]
    assert err["type"] == "invalid_request_error"
    assert headers["Content-Type"].startswith("application/json")


async def test_huge_body_is_413(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    proxy_cfg = ProxyConfig(limits=ProxyLimitsConfig(max_body_size=64 * 1024))
    async with running_proxy(mesh_config(*fakes), proxy_cfg) as proxy:
        big = b'{"model": "chat", "messages": [{"role": "user", "content": "' + (
            b"x" * 200_000) + b'"}]}'
        status, body, _ = await post_raw(proxy, "/v1/chat/completions", big)
        assert status == 413
        err = assert_error_shape(body)
        assert err["code"] == "request_too_large"
        assert "65536" in err["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own 413
            for _ in range(10):
                yield b"x" * 20_000

        async with aiohttp.ClientSession() as s, s.post(proxy.base_url + "/chat/completions",
                                                         data=chunks()) as r:
            assert r.status == 413
            assert_error_shape(await r.json())


async def test_unknown_path_and_method_are_json(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/nothing") as r:
            assert r.status == 404
            assert assert_error_shape(await r.json())["code"] == "not_found"
        async with s.get(proxy.base_url + "/chat/completions") as r:
            assert r.status == 405
            assert_error_shape(await r.json())


# --------------------------------------------------------------------------- auth, admin, cors


def auth_proxy_config(**kw: Any) -> ProxyConfig:
    return ProxyConfig(
        auth=ProxyAuthConfig(
            keys=(VirtualKeyConfig(key="mm-user-key-1", name="user"),
                  VirtualKeyConfig(key="mm-limited-key", name="limited",
                                   pools=("chat",), rpm=2)),
            admin_keys=("mm-admin-key-1",),
        ),
        **kw,
    )


async def test_auth_required_when_keys_configured(
        fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    async with running_proxy(mesh_config(*fakes), auth_proxy_config()) as proxy:
        with pytest.raises(openai.AuthenticationError) as info:
            await proxy.client("wrong").chat.completions.create(model="chat", messages=MSG)
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        status, body, _ = await post_raw(proxy, "/v1/chat/completions",
                                         b'{"model": "chat", "messages": []}')
        assert status == 401
        assert assert_error_shape(body)["code"] == "missing_api_key"
        ok = await proxy.client("mm-user-key-1").chat.completions.create(model="chat",
                                                                        messages=MSG)
        assert ok.choices[0].message.content


async def test_virtual_key_pool_restriction_and_rpm(
        fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    async with running_proxy(mesh_config(*fakes), auth_proxy_config()) as proxy:
        limited = proxy.client("mm-limited-key")
        with pytest.raises(openai.PermissionDeniedError) as info:
            await limited.embeddings.create(model="alpha.text-embedding-3-small", input="x")
        assert info.value.code == "model_not_allowed"
        # a model of the allowed pool is reached only through the pool (its budget and
        # limits): naming it directly is refused, naming the pool is fine (second request)
        with pytest.raises(openai.PermissionDeniedError) as direct:
            await limited.chat.completions.create(model="beta.gpt-4o-mini", messages=MSG)
        assert direct.value.code == "model_not_allowed" and "'chat'" in str(direct.value)
        with pytest.raises(openai.RateLimitError) as rl:
            await limited.chat.completions.create(model="chat", messages=MSG)
        # the ledger's rolling minute (modelmesh_core.windows): a request counts 60 to 61 s
        assert 1 <= int(rl.value.response.headers["retry-after"]) <= 61
        visible = [m.id for m in (await limited.models.list()).data]
        assert visible == ["chat"]


async def test_admin_api(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    async with running_proxy(mesh_config(*fakes), auth_proxy_config()) as proxy:
        admin = {"Authorization": "Bearer mm-admin-key-1"}
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.url + "/admin/pools") as r:
                assert r.status == 401
            async with s.get(proxy.url + "/admin/pools",
                             headers={"Authorization": "Bearer mm-user-key-1"}) as r:
                assert r.status == 403
                assert_error_shape(await r.json())
            async with s.get(proxy.url + "/admin/pools", headers=admin) as r:
                assert r.status == 200
                pools = await r.json()
                assert [m["model"] for m in pools["chat"]["models"]] == [
                    "alpha.gpt-4o-mini", "beta.gpt-4o-mini"]
            # stick-until-failure learns its pool order on the first request
            await proxy.client("mm-user-key-1").chat.completions.create(model="chat",
                                                                       messages=MSG)
            async with s.post(proxy.url + "/admin/pools/chat/rotate", headers=admin) as r:
                assert r.status == 200
                assert (await r.json())["active_model"] == "beta.gpt-4o-mini"
            async with s.post(proxy.url + "/admin/pools/nope/rotate", headers=admin) as r:
                assert r.status == 404
            proxy.mesh.deactivate("alpha.gpt-4o-mini")
            async with s.post(proxy.url + "/admin/models/alpha.gpt-4o-mini/reactivate",
                              headers=admin) as r:
                assert r.status == 200
            status = proxy.mesh.pool_status()["chat"]["models"][0]
            assert status["status"] == "active"
            new_config = mesh_config(*fakes)
            new_config["pools"]["fast"] = {"models": ["beta.gpt-4o-mini"]}
            async with s.post(proxy.url + "/admin/reload", headers=admin,
                              json={"config": new_config}) as r:
                assert r.status == 200, await r.text()
            bad = mesh_config(*fakes)
            bad["pools"]["chat"]["retry"]["backoff"] = "sometimes"
            async with s.post(proxy.url + "/admin/reload", headers=admin,
                              json={"config": bad}) as r:
                assert r.status == 400
                assert "pools.chat.retry.backoff" in (await r.json())["error"]["message"]
            async with s.get(proxy.url + "/admin/keys", headers=admin) as r:
                text = await r.text()
                assert "mm-user-key-1" not in text and '"user"' in text
        out = await proxy.client("mm-user-key-1").chat.completions.create(model="fast",
                                                                         messages=MSG)
        assert out.model == "beta.gpt-4o-mini"


async def test_cors(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    cfg = ProxyConfig(cors=CorsConfig(origins=("https://app.example",)))
    async with running_proxy(mesh_config(*fakes), cfg) as proxy, aiohttp.ClientSession() as s:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        async with s.options(proxy.base_url + "/chat/completions", headers=pre) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        async with s.options(proxy.base_url + "/chat/completions",
                             headers={**pre, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
        async with s.post(proxy.base_url + "/chat/completions",
                          json={"model": "chat", "messages": MSG},
                          headers={"Origin": "https://app.example"}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "x-modelmesh-model" in r.headers["Access-Control-Expose-Headers"]


# --------------------------------------------------------------------------- ops


async def test_health_ready_metrics(proxy: Proxy, fakes: tuple[FakeUpstream, FakeUpstream]
                                    ) -> None:
    a, _ = fakes
    client = proxy.client()
    await client.chat.completions.create(model="chat", messages=MSG)
    a.script(Fail(500))
    await client.chat.completions.create(model="chat", messages=MSG)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(proxy.url + "/ready") as r:
            assert r.status == 200
            assert set((await r.json())["providers"]) == {"alpha", "beta"}
        async with s.get(proxy.url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    assert ('modelmesh_requests_total{model="alpha.gpt-4o-mini",outcome="success",'
            'pool="chat",provider="alpha"} 1.0') in text
    assert 'modelmesh_attempt_failures_total{error="ProviderError"' in text
    # the same routing metrics as the library's Prometheus sink: status class, reason and a
    # failover counter by name
    assert 'status_class="5xx"' in text
    assert ('modelmesh_failovers_total{model="alpha.gpt-4o-mini",pool="chat",'
            'reason="server_error"} 1.0') in text
    assert 'modelmesh_rotations_total{pool="chat"} 1.0' in text
    assert "modelmesh_request_latency_seconds_bucket" in text
    assert 'modelmesh_tokens_total{kind="completion"' in text
    assert 'modelmesh_http_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text


async def test_metrics_registry_is_per_app(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    from prometheus_client import REGISTRY

    async with running_proxy(mesh_config(*fakes)) as p1, running_proxy(mesh_config(*fakes)) as p2:
        assert p1.server.metrics.registry is not p2.server.metrics.registry
        await p1.client().chat.completions.create(model="chat", messages=MSG)
    assert REGISTRY.get_sample_value("modelmesh_requests_total") is None


async def test_graceful_shutdown_drains_streams(fakes: tuple[FakeUpstream, FakeUpstream]
                                                ) -> None:
    a, _ = fakes
    a.default = Reply("a b c d e f g h", chunk_delay=0.1)
    mesh = ModelMesh(mesh_config(*fakes))
    app = create_app(mesh)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                                  max_retries=0) as client:
        stream = await client.chat.completions.create(model="chat", messages=MSG, stream=True)
        first = await stream.__anext__()
        cleanup = asyncio.create_task(runner.cleanup())
        rest = [c async for c in stream]
        await cleanup
    text = (first.choices[0].delta.content or "") + "".join(
        c.choices[0].delta.content or "" for c in rest)
    assert text == "a b c d e f g h"
    assert not mesh.started, "the app initialised the mesh, so it shut it down"


async def test_virtual_key_budget_counts_streams(fakes: tuple[FakeUpstream, FakeUpstream]
                                                 ) -> None:
    from modelmesh_core.config import BudgetConfig

    config = mesh_config(*fakes)
    priced = {"pricing": {"input": 1_000_000, "output": 1_000_000}}  # $1 per token
    config["models"] = {"alpha.gpt-4o-mini": priced, "beta.gpt-4o-mini": priced}
    proxy_cfg = ProxyConfig(auth=ProxyAuthConfig(keys=(
        VirtualKeyConfig(key="mm-budget-key", name="team-a",
                         budget=BudgetConfig(daily=0.5)),)))
    async with running_proxy(config, proxy_cfg) as proxy:
        client = proxy.client("mm-budget-key")
        stream = await client.chat.completions.create(model="chat", messages=MSG, stream=True)
        assert [c async for c in stream]
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="chat", messages=MSG)
        assert info.value.code == "budget_exceeded"
        assert info.value.response.headers["x-should-retry"] == "false"
        assert "key:team-a daily budget" in info.value.message


HI: Any = [{"role": "user", "content": "hi"}]


async def test_key_scoped_to_a_pool_keeps_access_while_its_models_cool_down(fakes: Any) -> None:
    cfg = mesh_config(*fakes)
    cfg["pools"]["chat"]["capability"] = "chat-completion"
    cfg["proxy"] = {"auth": {"keys": [{"key": "mm-team-0001", "name": "team",
                                       "pools": ["chat"]}]}}
    async with running_proxy(cfg) as proxy:
        for mid in ("alpha.gpt-4o-mini", "beta.gpt-4o-mini"):
            proxy.mesh.deactivate(mid)
        client = proxy.client(api_key="mm-team-0001")
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="chat-completion", messages=HI)
        assert info.value.status_code == 503  # not a (cached) 403
        for mid in ("alpha.gpt-4o-mini", "beta.gpt-4o-mini"):
            proxy.mesh.reactivate(mid)
        reply = await client.chat.completions.create(model="chat-completion", messages=HI)
        assert reply.choices[0].message.content


async def test_all_candidates_rate_limited_gives_429_with_retry_after(fakes: Any) -> None:
    a, b = fakes
    async with running_proxy(mesh_config(a, b)) as proxy:
        a.script(Fail.rate_limit(retry_after=60))
        b.script(Fail.rate_limit(retry_after=40))
        statuses = []
        for _ in range(2):
            status, body, headers = await post_raw(
                proxy, "/v1/chat/completions",
                '{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}',
                {"content-type": "application/json"})
            statuses.append((status, headers.get("Retry-After")))
            assert_error_shape(body)
        # first: both attempts answered 429; then: both are known to be limited, no call made
        assert statuses == [(429, "40"), (429, "40")]
        assert len([c for c in a.calls if c.path.endswith("completions")]) == 1


async def test_admin_reload_with_empty_body_rereads_the_file(fakes: Any, tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "mesh.yaml"
    cfg = mesh_config(*fakes)
    cfg["proxy"] = {"auth": {"admin_keys": ["mm-admin-000001"]}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    async with running_proxy(str(path)) as proxy:  # type: ignore[arg-type]
        cfg["pools"]["chat"]["strategy"] = "round-robin"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        status, body, _ = await post_raw(proxy, "/admin/reload", b"",
                                         {"authorization": "Bearer mm-admin-000001"})
        assert status == 200, body
        assert proxy.mesh.pools["chat"].strategy_name == "modelmesh.round-robin.v1"


async def test_preferred_provider_header_cannot_escape_a_key_pool(fakes: Any) -> None:
    cfg = mesh_config(*fakes)
    cfg["pools"] = {
        "chat": {"capability": "chat-completion", "providers": ["alpha"]},
        "other": {"capability": "chat-completion", "providers": ["beta"], "priority": -1},
    }
    proxy_cfg = ProxyConfig(auth=ProxyAuthConfig(keys=(
        VirtualKeyConfig(key="mm-scoped-0001", name="scoped", pools=("chat",)),)))
    async with running_proxy(cfg, proxy_cfg) as proxy:
        client = proxy.client("mm-scoped-0001")
        ok = await client.chat.completions.create(model="chat-completion", messages=MSG)
        assert ok.model == "alpha.gpt-4o-mini"
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="chat-completion", messages=MSG,
                extra_headers={"x-modelmesh-preferred-provider": "beta"})


async def test_streams_sharing_a_client_request_id_are_all_billed(fakes: Any) -> None:
    from modelmesh_core.config import BudgetConfig

    config = mesh_config(*fakes)
    priced = {"pricing": {"per_request": 0.3}}
    config["models"] = {"alpha.gpt-4o-mini": priced, "beta.gpt-4o-mini": priced}
    proxy_cfg = ProxyConfig(auth=ProxyAuthConfig(keys=(
        VirtualKeyConfig(key="mm-budget-0002", name="team-b",
                         budget=BudgetConfig(daily=1.0)),)))
    async with running_proxy(config, proxy_cfg) as proxy:
        client = proxy.client("mm-budget-0002")

        async def one() -> str:
            stream = await client.chat.completions.create(
                model="chat", messages=MSG, stream=True, extra_headers={"x-request-id": "same"})
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        assert all(await asyncio.gather(*(one() for _ in range(3))))
        key = next(iter(proxy.server.keys.values()))
        assert proxy.server.key_usage(key)["day_spend"] == pytest.approx(0.9)


async def test_admin_keys_are_not_proxy_keys(fakes: Any) -> None:
    async with running_proxy(mesh_config(*fakes), auth_proxy_config()) as proxy:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await proxy.client("mm-admin-key-1").chat.completions.create(
                model="chat", messages=MSG)
        assert info.value.code == "admin_key_not_allowed"


def test_open_admin_api_is_for_this_machine_only() -> None:
    from modelmesh_core.server.auth import is_loopback as _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.5.0.2")
    assert not _is_loopback("10.0.0.8") and not _is_loopback("192.168.1.4")
    assert not _is_loopback(None) and not _is_loopback("garbage")


async def test_reload_keeps_key_counters_and_applies_a_new_body_limit(
        fakes: Any, tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "mesh.yaml"
    cfg = mesh_config(*fakes)
    cfg["proxy"] = {"auth": {"keys": [{"key": "mm-rpm-key-0003", "name": "r", "rpm": 2}],
                             "admin_keys": ["mm-admin-000004"]},
                    "limits": {"max_body_size": "10KB"}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    big = ('{"model": "chat", "messages": [{"role": "user", "content": "'
           + "x" * 15_000 + '"}]}')
    headers = {"authorization": "Bearer mm-rpm-key-0003", "content-type": "application/json"}
    async with running_proxy(str(path)) as proxy:  # type: ignore[arg-type]
        status, _, _ = await post_raw(proxy, "/v1/chat/completions", big, headers)
        assert status == 413
        cfg["proxy"]["limits"]["max_body_size"] = "1MB"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        status, body, _ = await post_raw(proxy, "/admin/reload", b"",
                                         {"authorization": "Bearer mm-admin-000004"})
        assert status == 200, body
        # the 413 above counted against rpm 2; this is the second request of the minute
        status, body, _ = await post_raw(proxy, "/v1/chat/completions", big, headers)
        assert status == 200, body
        status, body, _ = await post_raw(proxy, "/v1/chat/completions", big, headers)
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"


async def test_undecodable_body_is_a_400(fakes: Any) -> None:
    async with running_proxy(mesh_config(*fakes)) as proxy:
        status, body, _ = await post_raw(
            proxy, "/v1/chat/completions",
            b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}',
            {"content-type": "application/json", "content-encoding": "gzip"})
        assert status == 400
        assert assert_error_shape(body)["code"] == "invalid_body"


async def test_scoped_key_asking_for_an_unknown_model_gets_404(fakes: Any) -> None:
    async with running_proxy(mesh_config(*fakes), auth_proxy_config()) as proxy:
        with pytest.raises(openai.NotFoundError):
            await proxy.client("mm-limited-key").chat.completions.create(
                model="gpt-4o-mini", messages=MSG)


# --------------------------------------------------------------------------- stream encoding


def test_stream_frames_are_the_encoded_chunk_objects_byte_for_byte() -> None:
    import orjson

    from modelmesh_core.server.sse import StreamEncoder
    from modelmesh_core.types import CompletionResponse, ToolCall
    from modelmesh_core.wire import chunk_to_dict

    def chunk(content: str = "", model: str = "alpha.gpt-4o-mini", **kw: Any
              ) -> CompletionResponse:
        return CompletionResponse(content=content, model=model, provider="alpha",
                                  id="chatcmpl-1", created=7, **kw)

    stream = [chunk("", role="assistant"), chunk("Hel"), chunk('lo "quoted" \u00e9\n'),
              chunk(""), chunk("x", model="beta.gpt-4o-mini"),
              chunk("", tool_calls=(ToolCall(id="c1", name="f", arguments="{}", index=0),)),
              chunk("", finish_reason="stop", usage={"prompt_tokens": 3,
                                                     "completion_tokens": 4})]
    for want_usage in (False, True):
        encoder = StreamEncoder(stream[0], include_usage=want_usage)
        frames = [encoder.frame(c) for c in stream]
        expected = [b"data: " + orjson.dumps(chunk_to_dict(c, want_usage, first=i == 0,
                                                            id="chatcmpl-1", created=7))
                    + b"\n\n" for i, c in enumerate(stream)]
        expected[3] = None  # type: ignore[call-overload]  # nothing to say: held back
        assert frames == expected
        assert encoder.usage == {"prompt_tokens": 3, "completion_tokens": 4}
        closing = encoder.closing_frames()
        assert closing.endswith(b"data: [DONE]\n\n")
        assert (b'"usage":{"prompt_tokens":3' in closing) is want_usage


async def test_library_client_bills_a_stream_from_its_last_chunk(fakes: Any) -> None:
    from modelmesh_core.client import AsyncMeshClient

    config = mesh_config(*fakes)
    config["models"]["alpha.gpt-4o-mini"] = {"pricing": {"per_request": 0.25}}
    async with AsyncMeshClient(ModelMesh(config)) as client:
        stream = await client.chat.completions.create(model="chat", messages=MSG, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text
        assert client.usage["cost"] == pytest.approx(0.25)
        assert client.usage["completion_tokens"] > 0


def test_depth_precheck_is_safe() -> None:
    from modelmesh_core.limits import MAX_JSON_DEPTH, cannot_be_too_deep, too_deep

    shallow = b'{"a": [1, {"b": "[[[["}]}'
    assert cannot_be_too_deep(shallow)
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert not cannot_be_too_deep(deep)
    assert too_deep(orjson_loads(deep)) is not None
    wide = b"[" + b"[]," * 100 + b"[]]"
    assert not cannot_be_too_deep(wide) and too_deep(orjson_loads(wide)) is None


def orjson_loads(raw: bytes) -> Any:
    import orjson

    return orjson.loads(raw)
