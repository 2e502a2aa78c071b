"""The proxy under hostile input: malformed bodies, schema abuse, sizes and bombs, method and
path abuse, auth abuse, slow and idle clients, cross-site admin requests, a forged Host.

Asserted throughout: a caller's mistake is never a 5xx, every answer is OpenAI-shaped JSON, no
secret appears in any body or captured log, model and provider health are unchanged by
caller errors, and memory stays bounded. Bounded in count and time (the module runs in about
half a minute on two cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from modelmesh_core.config import (
    ProxyAdminConfig,
    ProxyAuthConfig,
    ProxyConfig,
    ProxyLimitsConfig,
    VirtualKeyConfig,
)
from modelmesh_core.errors import InvalidRequestError
from modelmesh_core.fakes import FakeUpstream
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import SERVER_STATE, create_app, create_runner
from modelmesh_core.types import CompletionRequest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
USER_KEY = "mm-hostile-user-0001"
SCOPED_KEY = "mm-hostile-scoped-0002"
ADMIN_KEY = "mm-hostile-admin-0003"
ENV_SECRET = "env-secret-value-must-not-leak-42"
SECRETS = (UPSTREAM_KEY, USER_KEY, SCOPED_KEY, ADMIN_KEY, ENV_SECRET)
MSG = [{"role": "user", "content": "hi"}]


def mesh_config(base_url: str) -> dict[str, Any]:
    return {
        "providers": {
            "alpha": {"connector": "openai.llm.v1",
                      "config": {"base_url": base_url, "api_key": "${env:HOSTILE_UPSTREAM}"}},
            "beta": {"connector": "openai.llm.v1",
                     "config": {"base_url": base_url, "api_key": "${env:HOSTILE_UPSTREAM}"}},
        },
        "models": {"alpha.gpt-4o-mini": {}, "beta.gpt-4o-mini": {},
                   "alpha.text-embedding-3-small": {}},
        "pools": {"chat": {"models": ["alpha.gpt-4o-mini", "beta.gpt-4o-mini"]}},
        "discovery": {"auto_detect": False},
    }


def keyed_proxy(**limits: Any) -> ProxyConfig:
    return ProxyConfig(
        auth=ProxyAuthConfig(keys=(VirtualKeyConfig(key=USER_KEY, name="user"),
                                   VirtualKeyConfig(key=SCOPED_KEY, name="scoped",
                                                    pools=("chat",))),
                             admin_keys=(ADMIN_KEY,)),
        limits=ProxyLimitsConfig(**limits))


class Running:
    def __init__(self, app: web.Application, runner: web.AppRunner, mesh: ModelMesh) -> None:
        self.app, self.runner, self.mesh = app, runner, mesh
        self.host, self.port = runner.addresses[0][:2]
        self.url = f"http://{self.host}:{self.port}"

    def health(self) -> dict[str, Any]:
        """What caller errors must never change: each model's and provider's state."""
        keep = ("status", "consecutive_failures", "failures", "last_error", "cooldown_until")
        out: dict[str, Any] = {}
        for pool, info in self.mesh.pool_status().items():
            for m in info["models"]:
                out[f"{pool}/{m['model']}"] = {k: m[k] for k in keep}
        for name, p in self.mesh.provider_status().items():
            out[f"provider/{name}"] = {k: p[k] for k in ("available", "auth_valid")}
        return out


@contextlib.asynccontextmanager
async def running(proxy: ProxyConfig | None, env: dict[str, str] | None = None
                  ) -> AsyncIterator[tuple[Running, FakeUpstream]]:
    async with FakeUpstream(api_keys={UPSTREAM_KEY}) as fake:
        mesh = ModelMesh(mesh_config(fake.base_url),
                         env={"HOSTILE_UPSTREAM": UPSTREAM_KEY, "HOSTILE_OTHER": ENV_SECRET,
                              **(env or {})})
        app = create_app(mesh, proxy)
        runner = create_runner(app, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield Running(app, runner, mesh), fake
        finally:
            await runner.cleanup()


@pytest.fixture
def captured(capfd: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """Every ModelMesh log line at DEBUG (aiohttp's records are routed through it); at the
    end, stderr and stdout are appended too."""
    lines: list[str] = []
    logger.enable("modelmesh_core")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("modelmesh_core")
        out, err = capfd.readouterr()
        lines.extend([out, err])


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:12]}… leaked in {text[:200]!r}"
        assert "Traceback" not in text


def error_of(status: int, body: bytes) -> dict[str, Any]:
    """The OpenAI error object of a non-2xx answer (asserting its shape)."""
    data = orjson.loads(body)
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


# --------------------------------------------------------------------------- raw HTTP


async def raw_exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
                    if _complete(b"".join(chunks)):
                        break
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# --------------------------------------------------------------------------- bodies


DEEP = 300


def deep_body(depth: int, field: str = "extra_field", model: str = "chat") -> bytes:
    """A chat body whose ``field`` nests ``depth`` objects (orjson will not write it)."""
    return (b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": '
            b'"hi"}], "' + field.encode() + b'": ' + b'{"a": ' * depth + b'"x"'
            + b"}" * depth + b"}")


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_schema_abuse_is_400_and_never_touches_model_health(captured: list[str]) -> None:
    async with running(keyed_proxy()) as (proxy, fake):
        before = proxy.health()
        auth = {"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"}
        cases: list[tuple[bytes, int, str | None]] = [
            (b"not json", 400, "invalid_json"),
            (b"[1, 2]", 400, "invalid_body"),
            (b"5", 400, "invalid_body"),
            (b"{\"model\": \"chat\"", 400, "invalid_json"),
            (deep_body(DEEP), 400, "invalid_value"),
            (deep_body(70, "response_format"), 400, "invalid_value"),
            (b"[" * 1500 + b"]" * 1500, 400, "invalid_json"),
            (orjson.dumps({"model": "chat", "messages": MSG, "max_tokens": 2_000_000_000}),
             400, "context_length_exceeded"),
            (orjson.dumps({"model": "chat", "messages": [
                {"role": "user", "content": "word " * 180_000}]}), 400,
             "context_length_exceeded"),
            (orjson.dumps({"model": "M" * 900_000, "messages": MSG}), 400, "invalid_value"),
            (orjson.dumps({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}),
             400, "invalid_value"),
            (orjson.dumps({"model": "chat", "messages": MSG, "temperature": "hot"}), 400,
             "invalid_type"),
            (orjson.dumps({"model": 5, "messages": MSG}), 400, "invalid_type"),
            (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], '
             b'"max_tokens": 99999999999999999999999}', 400, "invalid_type"),
            (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], '
             b'"temperature": 1e400}', 400, "invalid_json"),
            (orjson.dumps({"model": "no-such-model", "messages": MSG}), 404,
             "model_not_found"),
        ]
        async with aiohttp.ClientSession() as s:
            for _ in range(3):  # three times: once was enough to take a pool down before
                for data, status, code in cases:
                    async with s.post(proxy.url + "/v1/chat/completions", data=data,
                                      headers=auth) as r:
                        body = await r.read()
                        assert r.status == status, (data[:80], body[:300])
                        err = error_of(r.status, body)
                        assert err["code"] == code, (data[:80], err)
                        assert len(body) < 4000  # nothing large echoed back
                        assert_clean(body.decode())
            async with s.post(proxy.url + "/v1/chat/completions", headers=auth, data=orjson.dumps(
                    {"model": "chat", "messages": MSG, "max_tokens": 2_000_000_000})) as r:
                err = error_of(r.status, await r.read())
                assert err["param"] == "max_tokens" and err["type"] == "invalid_request_error"
            async with s.post(proxy.url + "/v1/embeddings", headers=auth, data=(
                    b'{"model": "alpha.text-embedding-3-small", "input": "x", "d": '
                    + b"[" * DEEP + b"]" * DEEP + b"}")) as r:
                assert r.status == 400
            # the pool still answers, and nothing was sent upstream for the bad requests
            async with s.post(proxy.url + "/v1/chat/completions", headers=auth,
                              data=orjson.dumps({"model": "chat", "messages": MSG})) as r:
                assert r.status == 200, await r.text()
        assert len([c for c in fake.calls if c.path.endswith("/chat/completions")]) == 1
        after = proxy.health()
        assert {k: v for k, v in after.items() if k != "chat/alpha.gpt-4o-mini"} == {
            k: v for k, v in before.items() if k != "chat/alpha.gpt-4o-mini"}
        assert after["chat/alpha.gpt-4o-mini"]["failures"] == 0
        assert all(v.get("status", "active") == "active" for v in after.values())
    assert_clean(*captured)


async def test_an_unencodable_request_in_process_is_the_callers_error() -> None:
    """The library path (no edge parser): the adapter refuses to encode, the router passes
    the typed 400 on without recording it or trying the next model."""
    async with running(None) as (proxy, fake):
        router = proxy.mesh.router
        before = proxy.health()
        request = CompletionRequest(messages=MSG, extra={"extra_field": nested(DEEP)})
        for _ in range(3):
            with pytest.raises(InvalidRequestError) as info:
                await router.complete("chat", request)
            assert info.value.status == 400 and info.value.param
            with pytest.raises(InvalidRequestError):
                async for _chunk in router.stream("chat", request):
                    pass
        assert proxy.health() == before
        assert not fake.calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "messages", "role", "content", "max_tokens", "stream",
                         "tools", "temperature", "stop", "n", "input", "x"]), inner,
        max_size=5),
    max_leaves=30))
def test_generated_bodies_never_5xx(subprocess_proxy: dict[str, Any], body: Any) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        status, data = sync_post(subprocess_proxy["port"], path, orjson.dumps(body),
                                 {"Authorization": f"Bearer {USER_KEY}",
                                  "Content-Type": "application/json"})
        assert status < 500, (path, body, data[:300])
        if status >= 400:
            error_of(status, data)
        assert_clean(data.decode())


# --------------------------------------------------------------------------- sizes and bombs


async def test_size_limits_and_bombs(captured: list[str]) -> None:
    async with running(keyed_proxy(max_body_size=1 << 20)) as (proxy, _fake):
        auth = f"Authorization: Bearer {USER_KEY}\r\n".encode()
        # a declared terabyte: refused at once, nothing read
        raw = await raw_exchange(proxy.host, proxy.port,
                                 b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth
                                 + b"Content-Type: application/json\r\n"
                                 b"Content-Length: 1000000000000\r\n\r\n{")
        status, _, body = parse_response(raw)
        assert status == 413 and error_of(status, body)["code"] == "request_too_large"
        # a gzip bomb: 64 MB of zeros in 64 KB
        bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
        async with aiohttp.ClientSession() as s:
            async with s.post(proxy.url + "/v1/chat/completions", data=bomb, headers={
                    "Authorization": f"Bearer {USER_KEY}", "Content-Encoding": "gzip",
                    "Content-Type": "application/json"}) as r:
                assert r.status == 413
                error_of(r.status, await r.read())
            # chunked beyond the limit
            async def gen() -> AsyncIterator[bytes]:
                for _ in range(40):
                    yield b"x" * 65536

            async with s.post(proxy.url + "/v1/chat/completions", data=gen(), headers={
                    "Authorization": f"Bearer {USER_KEY}"}) as r:
                assert r.status == 413
    assert_clean(*captured)


# --------------------------------------------------------------------------- HTTP abuse


PROTOCOL_ABUSE = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40),  # a TLS hello
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + USER_KEY.encode() + b"\x00\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + USER_KEY.encode() + b"\r\nX-Junk: " + b"j" * 9000 + b"\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nxx\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(200)) + b"\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Name: " + ADMIN_KEY.encode() + b"\r\n\r\n",
]


async def test_protocol_abuse_answers_json_without_echo_or_traceback(
        captured: list[str]) -> None:
    async with running(keyed_proxy()) as (proxy, _fake):
        for data in PROTOCOL_ABUSE:
            raw = await raw_exchange(proxy.host, proxy.port, data)
            assert_clean(raw.decode("latin-1"))
            if not raw:
                continue  # closed without an answer is acceptable for non-HTTP bytes
            status, headers, body = parse_response(raw)
            assert 400 <= status < 500, (data[:60], raw[:300])
            assert headers["content-type"].startswith("application/json"), raw[:300]
            error_of(status, body)
            assert b"jjjj" not in body and b"aaaa" not in body
    assert_clean(*captured)
    assert not any("Error handling request" in line for line in captured)


async def test_method_path_and_auth_abuse(captured: list[str]) -> None:
    traversal = ["/v1/../admin/keys", "/v1/%2e%2e/admin/keys", "/admin/..%2fkeys",
                 "//admin/keys", "/v1/chat/completions/../../admin/reload",
                 "/admin/keys%00", "/admin/keys/", "/v1/models/..%2f..%2fadmin%2fkeys",
                 "/ADMIN/KEYS", "/v1/chat/completions;/admin", "/" + "x" * 7000]
    async with running(keyed_proxy()) as (proxy, _fake):
        async with aiohttp.ClientSession() as s:
            for path in traversal:
                async with s.get(proxy.url + path, headers={
                        "Authorization": f"Bearer {USER_KEY}"}) as r:
                    body = await r.read()
                    assert r.status in (401, 403, 404, 405), (path, r.status)
                    error_of(r.status, body)
                    assert len(body) < 1500
            for method in ("PUT", "DELETE", "PATCH", "TRACE"):
                async with s.request(method, proxy.url + "/v1/chat/completions") as r:
                    assert r.status == 405
                    error_of(r.status, await r.read())
            checks = [
                ("/v1/models", {}, 401),
                ("/v1/models", {"Authorization": "Bearer " + "k" * 5000}, 401),
                ("/v1/models", {"Authorization": f"Basic {USER_KEY}"}, 401),
                ("/v1/models", {"Authorization": f"Bearer {ADMIN_KEY}"}, 403),
                ("/admin/keys", {"Authorization": f"Bearer {USER_KEY}"}, 403),
                ("/admin/keys", {"Authorization": f"Bearer {USER_KEY}x"}, 401),
                ("/metrics", {}, 401),
                ("/metrics", {"Authorization": f"Bearer {USER_KEY}"}, 200),
                ("/v1/models/alpha.gpt-4o-mini", {"Authorization": f"Bearer {SCOPED_KEY}"},
                 403),
            ]
            for path, headers, status in checks:
                async with s.get(proxy.url + path, headers=headers) as r:
                    body = await r.read()
                    assert r.status == status, (path, body[:200])
                    if status >= 400:
                        error_of(r.status, body)
                    assert_clean(body.decode())
            # a pool-limited key cannot bypass the pool by naming a member or a provider
            for headers, model in (({}, "alpha.gpt-4o-mini"),
                                   ({"x-modelmesh-preferred-provider": "z" * 7000}, "chat")):
                async with s.post(proxy.url + "/v1/chat/completions", headers={
                        "Authorization": f"Bearer {SCOPED_KEY}", **headers},
                        json={"model": model, "messages": MSG}) as r:
                    assert r.status == (403 if model != "chat" else 200), await r.text()
            assert not proxy.app[SERVER_STATE]._pool_of_name  # junk never cached
    assert_clean(*captured)


# --------------------------------------------------------------------------- slow clients


async def test_slow_idle_and_too_many_clients() -> None:
    cfg = keyed_proxy(header_timeout=0.6, body_timeout=0.6, max_connections=8)
    async with running(cfg) as (proxy, _fake):
        t0 = time.monotonic()
        # slow loris: one header byte every 0.2 s
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        closed_after = None
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 40:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.2)
            if reader.at_eof() or writer.is_closing() or (
                    await _closed(reader)):
                closed_after = time.monotonic() - t0
                break
        writer.close()
        assert closed_after is not None and closed_after < 3.0
        # idle connections are closed too
        idle = [await asyncio.open_connection(proxy.host, proxy.port) for _ in range(5)]
        await asyncio.sleep(1.2)
        for r, w in idle:
            assert await _closed(r, wait=0.5)
            w.close()
        # a body that never finishes: 408
        raw = await raw_exchange(
            proxy.host, proxy.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + USER_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"model\"", timeout=3)
        status, _, body = parse_response(raw)
        assert status == 408 and error_of(status, body)["code"] == "request_timeout"
        # beyond max_connections: a 503 in the OpenAI shape, the others keep working
        held = [await asyncio.open_connection(proxy.host, proxy.port) for _ in range(8)]
        raw = await raw_exchange(proxy.host, proxy.port,
                                 b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
        status, _, body = parse_response(raw)
        assert status == 503 and error_of(status, body)["code"] == "too_many_connections"
        for _r, w in held:
            w.close()
        await asyncio.sleep(0.1)
        raw = await raw_exchange(proxy.host, proxy.port,
                                 b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert parse_response(raw)[0] == 200


async def _closed(reader: asyncio.StreamReader, wait: float = 0.01) -> bool:
    try:
        async with asyncio.timeout(wait):
            data = await reader.read(65536)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b"" or reader.at_eof()


# --------------------------------------------------------------------------- the admin API


async def test_admin_api_is_off_without_a_key_and_guarded_when_open(
        captured: list[str]) -> None:
    async with running(None) as (proxy, _fake):
        async with aiohttp.ClientSession() as s:
            async with s.get(proxy.url + "/admin/keys") as r:
                assert r.status == 403
                assert error_of(r.status, await r.read())["code"] == "admin_disabled"
    open_cfg = ProxyConfig(admin=ProxyAdminConfig(open_on_loopback=True))
    async with running(open_cfg) as (proxy, fake):
        before = proxy.health()
        url = proxy.url + "/admin/reload"
        evil = mesh_config("http://127.0.0.1:9/v1")
        evil["providers"]["alpha"]["config"]["api_key"] = "${env:HOSTILE_OTHER}"
        attempts: list[tuple[dict[str, str], bytes, int, str]] = [
            ({"Content-Type": "text/plain"}, orjson.dumps({"config": evil}), 415,
             "unsupported_media_type"),
            ({"Content-Type": "application/json", "Origin": "https://evil.example"},
             orjson.dumps({"config": evil}), 403, "cross_site_request"),
            ({"Content-Type": "application/json", "Origin": "null"}, b"", 403,
             "cross_site_request"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, b"", 403,
             "cross_site_request"),
            ({"Content-Type": "application/json", "Host": f"evil.example:{proxy.port}"},
             b"", 403, "host_not_allowed"),
            ({"Content-Type": "application/json", "Host": f"127.0.0.1:{proxy.port + 1}"},
             b"", 403, "host_not_allowed"),
            ({"Content-Type": "application/json"}, orjson.dumps({"config": evil}), 400,
             "new_secret_reference"),
        ]
        for bad in ({"config": 5}, {"config": [1, 2]}, {"config": True}, {"path": 123},
                    {"path": ["a"]}, {"path": "/"}, [1, 2], True):
            attempts.append(({"Content-Type": "application/json"}, orjson.dumps(bad), 400, ""))
        async with aiohttp.ClientSession() as s:
            for headers, data, status, code in attempts:
                async with s.post(url, data=data, headers=headers) as r:
                    body = await r.read()
                    assert r.status == status, (headers, data[:60], body[:300])
                    err = error_of(r.status, body)
                    assert not code or err["code"] == code, err
                    assert_clean(body.decode())
            async with s.get(proxy.url + "/admin/keys",
                             headers={"Host": f"rebound.example:{proxy.port}"}) as r:
                assert r.status == 403
            # the same reload with a name the running config uses is accepted, from here
            fine = mesh_config(fake.base_url)
            async with s.post(url, json={"config": fine},
                              headers={"Origin": proxy.url,
                                       "Sec-Fetch-Site": "same-origin"}) as r:
                assert r.status == 200, await r.text()
            async with s.get(proxy.url + "/admin/keys",
                             headers={"Host": f"localhost:{proxy.port}"}) as r:
                assert r.status == 200
            # a keyless proxy's /v1 refuses a rebound page too: it would spend the providers'
            # keys and read the answers
            chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            calls = len(fake.calls)
            async with s.post(proxy.url + "/v1/chat/completions", json=chat,
                              headers={"Host": f"rebound.example:{proxy.port}"}) as r:
                assert r.status == 403
                assert error_of(r.status, await r.read())["code"] == "host_not_allowed"
            assert len(fake.calls) == calls
            for host in (f"localhost:{proxy.port}", f"127.0.0.1:{proxy.port}"):
                async with s.post(proxy.url + "/v1/chat/completions", json=chat,
                                  headers={"Host": host}) as r:
                    assert r.status == 200, await r.text()
        assert proxy.health() == before
    assert_clean(*captured)


# --------------------------------------------------------------------------- a real process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_UPSTREAM = """
import asyncio, sys
from modelmesh_core.fakes import FakeUpstream
async def main():
    async with FakeUpstream(api_keys={sys.argv[1]}, rpm_limit=10**9, tpm_limit=10**12) as f:
        print(f.port, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def sync_post(port: int, path: str, data: bytes, headers: dict[str, str],
              method: str = "POST") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def subprocess_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A FakeUpstream and ``modelmesh -v serve`` in their own processes; stderr to a file."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOSTILE_UPSTREAM": UPSTREAM_KEY,
           "HOSTILE_OTHER": ENV_SECRET}
    upstream = subprocess.Popen([sys.executable, "-c", _UPSTREAM, UPSTREAM_KEY],
                                stdout=subprocess.PIPE, text=True, env=env)
    assert upstream.stdout is not None
    up_port = int(upstream.stdout.readline())
    port = _free_port()
    config = mesh_config(f"http://127.0.0.1:{up_port}/v1")
    config["proxy"] = {"auth": {"keys": [{"key": USER_KEY, "name": "user"},
                                         {"key": SCOPED_KEY, "name": "scoped",
                                          "pools": ["chat"]}],
                                "admin_keys": [ADMIN_KEY]}}
    path = tmp / "mesh.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    stderr = (tmp / "stderr.txt").open("w")
    proxy = subprocess.Popen([sys.executable, "-m", "modelmesh_core.cli", "-v", "serve", "-c",
                              str(path), "--port", str(port), "--loop", "asyncio"],
                             stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if sync_post(port, "/health", b"", {}, "GET")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield {"port": port, "pid": proxy.pid, "stderr": tmp / "stderr.txt"}
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        upstream.stdout.close()
        stderr.close()


async def test_memory_is_bounded_under_junk(subprocess_proxy: dict[str, Any]) -> None:
    """20,000 requests with unique junk headers, paths and keys: RSS stays at its plateau.
    Then the process's whole log (at DEBUG) holds no secret and no traceback."""
    port = subprocess_proxy["port"]
    proc = psutil.Process(subprocess_proxy["pid"])
    base = f"http://127.0.0.1:{port}"
    chat = orjson.dumps({"model": "chat", "messages": MSG})
    counter = iter(range(10**9))

    def junk(i: int, n: int = 7000) -> str:
        return (f"{i:08d}" + "j" * n)[:n]

    async def one(s: aiohttp.ClientSession) -> None:
        i = next(counter)
        kind = i % 4
        if kind == 0:
            url, headers, data = base + f"/v1/{junk(i, 400)}", {}, b""
            method = "GET"
        elif kind == 1:
            url, method, data = base + "/v1/chat/completions", "POST", chat
            headers = {"Authorization": f"Bearer mm-{junk(i, 300)}"}
        elif kind == 2:
            url, method, data = base + "/v1/chat/completions", "POST", chat
            headers = {"Authorization": f"Bearer {SCOPED_KEY}", "x-junk": junk(i),
                       "x-modelmesh-preferred-provider": junk(i, 3000),
                       "x-request-id": junk(i, 2000)}
        else:
            url, method = base + "/v1/chat/completions", "POST"
            data = orjson.dumps({"model": f"m-{junk(i, 200)}", "messages": MSG})
            headers = {"Authorization": f"Bearer {USER_KEY}",
                       "x-modelmesh-session-id": junk(i, 200)}
        async with s.request(method, url, data=data, headers=headers) as r:
            await r.read()
            assert r.status < 500, (kind, r.status)

    async def run(n: int) -> None:
        remaining = n
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(connector=connector) as s:
            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await one(s)

            await asyncio.gather(*(worker() for _ in range(16)))

    t0 = time.monotonic()
    await run(5_000)
    plateau = proc.memory_info().rss
    await run(15_000)
    grown = proc.memory_info().rss - plateau
    assert time.monotonic() - t0 < 60
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB after the plateau"
    log = Path(subprocess_proxy["stderr"]).read_text(encoding="utf-8", errors="replace")
    assert_clean(log)
