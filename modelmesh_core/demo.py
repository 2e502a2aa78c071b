"""``modelmesh demo``: a first run that needs no API key.

Three local fake OpenAI upstreams (one healthy, one failing ~20% of requests with 5xx, one
rate limited), a ModelMesh proxy on a free port in front of them, and a few hundred requests
sent through the official ``openai`` SDK (some streaming). The client never retries
(``max_retries=0``): every failover you see in the table is ModelMesh's.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from typing import Any, TextIO

from aiohttp import web

__all__ = ["DemoResult", "run_demo"]

_PROMPTS = (
    "Summarise the plot of Hamlet in one line.",
    "Write a haiku about failover.",
    "What is a capability pool?",
    "Translate 'good morning' into French.",
    "Give me three names for a router.",
)


class DemoResult:
    """What the demo measured (also used by tests)."""

    def __init__(self) -> None:
        self.served: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.overheads_ms: list[float] = []
        self.failovers = 0
        self.streams = 0
        self.errors: list[str] = []
        self.events: Counter[str] = Counter()
        self.attempt_failures: Counter[str] = Counter()
        self.elapsed_s = 0.0

    @property
    def ok(self) -> int:
        """Requests answered successfully."""
        return sum(self.served.values())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _config(steady: str, flaky: str, limited: str) -> dict[str, Any]:
    def provider(url: str, name: str) -> dict[str, Any]:
        return {"connector": "openai.llm.v1",
                "config": {"base_url": url, "api_key": f"sk-demo-{name}-not-a-real-key"}}

    return {
        "providers": {"steady": provider(steady, "steady"), "flaky": provider(flaky, "flaky"),
                      "limited": provider(limited, "limited")},
        "models": {"limited.gpt-4o-mini": {}, "flaky.gpt-4o-mini": {},
                   "steady.gpt-4o-mini": {}},
        "pools": {
            "chat": {
                "capability": "chat-completion",
                "strategy": "round-robin",
                "failure_threshold": 3,
                "cooldown": "2s",
                "retry": {"max_attempts": 4, "initial_delay": "1ms", "max_delay": "10ms",
                          "max_retry_after": "100ms"},
            },
        },
        "discovery": {"auto_detect": False},
    }


async def _run(requests: int, concurrency: int, stream_ratio: float, seed: int,
               console: Any, progress: bool) -> DemoResult:
    import openai

    from .events import Event, EventType
    from .fakes import FakeUpstream, Flaky, RateLimited, Reply
    from .mesh import ModelMesh
    from .server import create_app, create_runner

    result = DemoResult()
    reply = Reply(delay=0.004, chunk_delay=0.001)
    rpm = max(5, requests // 8)
    async with FakeUpstream(default=reply) as steady, \
            FakeUpstream(default=Flaky(0.2, then=reply, seed=seed)) as flaky, \
            FakeUpstream(default=RateLimited(rpm=rpm, then=reply)) as limited:
        mesh = ModelMesh(_config(steady.base_url, flaky.base_url, limited.base_url),
                         seed=seed)
        await mesh.initialize()

        def on_event(event: Event) -> None:
            result.events[event.type] += 1
            if event.type == EventType.ATTEMPT_FAILED and event.model:
                result.attempt_failures[event.model] += 1

        unsubscribe = mesh.events.subscribe(on_event)
        app = create_app(mesh)
        runner = create_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        rng = random.Random(seed)
        plan = [(i, rng.random() < stream_ratio) for i in range(requests)]
        queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        bar = task_id = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            bar = Progress(TextColumn("[bold]requests"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[note]}"), console=console, transient=True)
            task_id = bar.add_task("requests", total=requests, note="")
            bar.start()
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback calls
        client = openai.AsyncOpenAI(
            base_url=f"http://{host}:{port}/v1", api_key="demo", max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(trust_env=False))

        async def one(i: int, stream: bool) -> None:
            messages: list[Any] = [{"role": "user", "content": _PROMPTS[i % len(_PROMPTS)]}]
            started = time.perf_counter()
            try:
                if stream:
                    result.streams += 1
                    s: Any = await client.chat.completions.create(model="chat",
                                                                  messages=messages, stream=True)
                    headers = s.response.headers
                    async for _chunk in s:
                        pass
                else:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="chat", messages=messages)
                    headers = raw.headers
                    raw.parse()
            except openai.APIError as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}")
                return
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.served[headers.get("x-modelmesh-model", "?")] += 1
            if int(headers.get("x-modelmesh-attempts", "1")) > 1:
                result.failovers += 1
            overhead = headers.get("x-modelmesh-overhead-ms")
            if overhead is not None:
                result.overheads_ms.append(float(overhead))

        async def worker() -> None:
            while True:
                try:
                    i, stream = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(i, stream)
                if bar is not None:
                    bar.update(task_id, advance=1,  # type: ignore[arg-type]
                               note=f"failovers {result.failovers}")

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        finally:
            result.elapsed_s = time.perf_counter() - started
            if bar is not None:
                bar.stop()
            await client.close()
            unsubscribe()
            await runner.cleanup()
            await mesh.shutdown()
    return result


def _report(result: DemoResult, requests: int, console: Any) -> None:
    from rich.table import Table

    from .events import EventType

    models = sorted(set(result.served) | set(result.attempt_failures))
    table = Table(title="Requests per model", title_justify="left")
    table.add_column("model")
    table.add_column("answered", justify="right")
    table.add_column("share", justify="right")
    table.add_column("failed attempts", justify="right")
    for model in models:
        n = result.served.get(model, 0)
        table.add_row(model, str(n), f"{100 * n / max(result.ok, 1):.0f}%",
                      str(result.attempt_failures.get(model, 0)))
    console.print(table)

    summary = Table(title="Summary", title_justify="left", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    rate = result.ok / result.elapsed_s if result.elapsed_s else 0.0
    summary.add_row("requests sent", f"{requests} ({result.streams} streaming)")
    summary.add_row("answered", f"{result.ok}")
    summary.add_row("errors seen by the client", f"{len(result.errors)}")
    summary.add_row("failovers (answered after another model failed)", f"{result.failovers}")
    summary.add_row("rotations (pool.rotated events)",
                    f"{result.events.get(EventType.POOL_ROTATED, 0)}")
    summary.add_row("models deactivated / recovered",
                    f"{result.events.get(EventType.MODEL_DEACTIVATED, 0)} / "
                    f"{result.events.get(EventType.MODEL_RECOVERED, 0)}")
    summary.add_row("latency p50 / p99 (client side)",
                    f"{_pct(result.latencies_ms, 0.5):.1f} / "
                    f"{_pct(result.latencies_ms, 0.99):.1f} ms")
    summary.add_row("router overhead p50 / p99",
                    f"{_pct(result.overheads_ms, 0.5):.3f} / "
                    f"{_pct(result.overheads_ms, 0.99):.3f} ms")
    summary.add_row("wall time", f"{result.elapsed_s:.2f} s ({rate:.0f} req/s)")
    console.print(summary)
    for line in result.errors[:5]:
        console.print(f"[red]error:[/red] {line}")


def run_demo(requests: int = 300, concurrency: int = 16, stream_ratio: float = 0.25,
             seed: int = 7, out: TextIO | None = None, progress: bool = True) -> int:
    """Run the demo and print its tables; exit status 0 when no request failed."""
    from rich.console import Console

    console = Console(file=out or sys.stdout, highlight=False)
    console.print(
        "[bold]ModelMesh demo[/bold]: 3 fake upstreams (steady, flaky ~20% 5xx, "
        "rate limited), one proxy, the official openai SDK with retries off.")
    result = asyncio.run(_run(max(1, requests), concurrency, stream_ratio, seed, console,
                              progress))
    _report(result, requests, console)
    return 0 if not result.errors and result.ok == requests else 1
