"""Proxy virtual keys shared by replicas: two ``modelmesh serve`` processes on one SQLite store
count one rpm window and one budget per key, and a reload asked of one reaches the other's
proxy (its key table).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from modelmesh_core.fakes import FakeUpstream, Reply

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "mm-admin-shared-0001"
RPM_KEY = "mm-rpm-shared-0001"
USD_KEY = "mm-usd-shared-0001"
NEW_KEY = "mm-new-shared-0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(fake: FakeUpstream, db: Path, *, extra_key: bool = False) -> dict[str, Any]:
    keys: list[dict[str, Any]] = [
        {"key": RPM_KEY, "name": "rpm5", "rpm": 5},
        {"key": USD_KEY, "name": "usd", "budget": {"daily": 0.05}},
    ]
    if extra_key:
        keys.append({"key": NEW_KEY, "name": "new"})
    return {
        "plugins": {"entry_points": True},
        "discovery": {"auto_detect": False},
        "storage": {"connector": "modelmesh.sqlite.v1",
                    "config": {"path": str(db), "sync_interval": 0.05}},
        "providers": {"a": {"connector": "openai.llm.v1",
                            "config": {"base_url": fake.base_url, "api_key": "sk-test-0000"}}},
        "models": {"a.m": {"capabilities": ["chat-completion"],
                           "pricing": {"per_request": 0.01}}},
        "pools": {"chat": {"models": ["a.m"]}},
        "proxy": {"auth": {"keys": keys, "admin_keys": [ADMIN]}},
    }


class Pair:
    """Two proxy processes on one config file and one SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ports = [free_port(), free_port()]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", ""))
                                            if p)
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "modelmesh_core.cli", "serve", "--config", str(path),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port in self.ports]

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            for port, proc in zip(self.ports, self.procs, strict=True):
                while True:
                    assert proc.poll() is None, "a replica exited"
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/ready") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, "replica did not start"
                    await asyncio.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)  # reap it: an unreaped child is a ResourceWarning at teardown

    async def burst(self, key: str, n: int, first: int = 0) -> list[int]:
        """``n`` concurrent chat requests with ``key``, alternating replicas from ``first``."""
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                async with s.post(
                        f"http://127.0.0.1:{self.ports[(first + i) % 2]}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "chat",
                              "messages": [{"role": "user", "content": "hi"}]}) as r:
                    await r.read()
                    return r.status

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    async def admin(self, replica: int, method: str, path: str,
                    body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.request(
                method, f"http://127.0.0.1:{self.ports[replica]}{path}", json=body,
                headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            return r.status, await r.json()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Pair, FakeUpstream]]:
    fake = FakeUpstream(default=Reply(delay=0.05)).start_in_thread()
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config(fake, tmp_path / "state.db")))
    p = Pair(path)
    try:
        await p.ready()
        yield p, fake
    finally:
        p.stop()
        fake.stop_thread()


async def test_key_rpm_and_budget_hold_across_two_replicas(
        pair: tuple[Pair, FakeUpstream], tmp_path: Path) -> None:
    p, fake = pair
    statuses = await p.burst(RPM_KEY, 20)
    assert statuses.count(200) == 5 and statuses.count(429) == 15
    assert len(fake.calls) == 5
    # Budget $0.05 at $0.01 a request, requests alternating replicas: spent across both,
    # then refused on both. (A key's spend is known once an answer is charged, so requests
    # in flight together may pass a nearly spent budget: see docs/architecture.md.)
    for i in range(5):
        assert await p.burst(USD_KEY, 1, first=i) == [200]
    statuses = await p.burst(USD_KEY, 4)
    assert statuses == [429] * 4
    assert len(fake.calls) == 10
    # Both replicas report the same shared usage.
    for replica in (0, 1):
        status, listed = await p.admin(replica, "GET", "/admin/keys")
        assert status == 200
        usage = {k["name"]: k for k in listed}
        assert usage["rpm5"]["minute_requests"] == 5  # admitted ones only
        assert usage["usd"]["day_spend"] == pytest.approx(0.05)
        assert RPM_KEY not in str(listed)
    # A reload asked of replica 0 reaches replica 1's key table.
    assert (await p.burst(NEW_KEY, 2)) == [401, 401]
    p.path.write_text(yaml.safe_dump(config(fake, tmp_path / "state.db", extra_key=True)))
    status, _ = await p.admin(0, "POST", "/admin/reload")
    assert status == 200
    deadline = time.monotonic() + 5
    while (got := await p.burst(NEW_KEY, 2)) != [200, 200]:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.1)
