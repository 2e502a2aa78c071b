"""Run :class:`~modelmesh_core.fakes.FakeUpstream` from the shell, to try ModelMesh without keys.

``modelmesh fake-upstream [--port N] [--scenario NAME]`` (or ``python -m
modelmesh_core.fakes``) starts the fake OpenAI server on 127.0.0.1, prints its address and a
configuration that points a provider at it, and runs until Ctrl-C or SIGTERM. A scenario sets
the fake's default behaviour (every request gets it): a healthy upstream, a flaky one, one that
is rate-limited, overloaded, out of quota, slow, or that breaks its streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from .fakes import (
    DEFAULT_FAKE_MODELS,
    Behaviour,
    CutStream,
    Fail,
    FakeUpstream,
    Flaky,
    MalformedJSON,
    RateLimited,
    Reply,
)

__all__ = ["SCENARIOS", "add_arguments", "main", "run_fake_upstream"]

FAKE_KEY = "sk-fake-modelmesh-0000"

#: scenario name -> (what it does, behaviour factory taking the seed)
SCENARIOS: dict[str, tuple[str, Callable[[int | None], Behaviour]]] = {
    "ok": ("every request succeeds", lambda seed: Reply()),
    "flaky": ("30% of requests fail with a 500",
              lambda seed: Flaky(rate=0.3, seed=seed)),
    "rate-limited": ("5 requests a minute, then 429 with retry-after",
                     lambda seed: RateLimited(rpm=5)),
    "overloaded": ("every request fails with a 503", lambda seed: Fail(503)),
    "quota": ("every request fails with a 429 insufficient_quota", lambda seed: Fail.quota()),
    "slow": ("answers after 1 s, streams a chunk every 0.2 s",
             lambda seed: Reply(delay=1.0, chunk_delay=0.2)),
    "cut-stream": ("streams two chunks, then drops the connection", lambda seed: CutStream()),
    "malformed": ("answers 200 with unparsable JSON", lambda seed: MalformedJSON()),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``modelmesh fake-upstream`` (shared with ``python -m``)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="ok",
                        help="how it behaves: " + "; ".join(
                            f"{name}: {what}" for name, (what, _) in SCENARIOS.items()
                        ).replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--seed", type=int, default=None, help="seed of the flaky scenario")
    parser.add_argument("--api-key", default=None,
                        help="require this API key (default: accept any key)")


def _banner(fake: FakeUpstream, scenario: str, api_key: str | None) -> str:
    key = api_key or FAKE_KEY
    shown = "the key given with --api-key" if api_key else "any key"
    return "\n".join([
        f"fake OpenAI upstream on {fake.base_url} (scenario {scenario}: "
        f"{SCENARIOS[scenario][0]}; accepts {shown})",
        f"models: {', '.join(fake.models)}",
        "",
        "to route through it, save this as modelmesh.yaml and run `modelmesh serve`:",
        "",
        "providers:",
        "  fake:",
        "    connector: openai.llm.v1",
        f'    config: {{base_url: "{fake.base_url}", api_key: "{key}"}}',
        "",
        "press Ctrl-C to stop",
    ])


async def _serve(fake: FakeUpstream, ready: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await fake.start()
    try:
        ready()
        await stop.wait()
    finally:
        await fake.stop()


def run_fake_upstream(*, host: str = "127.0.0.1", port: int = 0, scenario: str = "ok",
                      seed: int | None = None, api_key: str | None = None,
                      out: TextIO | None = None) -> int:
    """Run the fake until SIGINT / SIGTERM; returns the exit status."""
    out = out or sys.stdout
    if scenario not in SCENARIOS:
        print(f"error: unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    fake = FakeUpstream(host=host, port=port, default=SCENARIOS[scenario][1](seed),
                        api_keys={api_key} if api_key else None, models=DEFAULT_FAKE_MODELS)
    try:
        asyncio.run(_serve(fake, lambda: print(_banner(fake, scenario, api_key), file=out,
                                               flush=True)))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    print(f"fake upstream stopped after {len(fake.calls)} requests", file=out, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelmesh_core.fakes``."""
    parser = argparse.ArgumentParser(prog="python -m modelmesh_core.fakes",
                                     description="Run a fake OpenAI upstream on 127.0.0.1.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_fake_upstream(host=args.host, port=args.port, scenario=args.scenario,
                             seed=args.seed, api_key=args.api_key)
