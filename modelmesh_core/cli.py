"""The ``modelmesh`` command line.

Subcommands: ``serve`` (the OpenAI-compatible proxy), ``check`` (validate a config and print
every problem with its path), ``route`` / ``explain`` (which model a name would get and why),
``pools``, ``models``, ``plugins``, ``capabilities``, ``secrets`` (set, get, list, rm in the
configured secret store), ``fake-upstream`` (a local fake OpenAI server to try things without
keys), ``demo`` (a local run that needs no API key). Logging goes through loguru: quiet by
default (warnings on stderr), ``-v`` for debug, ``--log-json`` for one JSON object per line
(both accepted before or after the subcommand). Secrets are never logged: every log line
passes through :func:`~modelmesh_core.redaction.redact`; ``secrets get`` prints the one value
asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._log import logger
from .redaction import redact

__all__ = ["build_parser", "main"]

CONFIG_ENV = "MODELMESH_CONFIG"
_DEFAULT_FILES = ("modelmesh.yaml", "modelmesh.yml")


# --------------------------------------------------------------------------- logging


def setup_logging(verbose: int = 0, json_lines: bool = False, sink: TextIO | None = None) -> None:
    """Enable ModelMesh's loguru logger with one stderr sink (WARNING, DEBUG with ``-v``)."""
    global _handler_id
    for handler in (0, _handler_id):  # loguru's default stderr handler, then ours
        if handler is not None:
            with contextlib.suppress(ValueError):
                logger.remove(handler)
    logger.configure(patcher=_redact_record)
    level = "DEBUG" if verbose else "WARNING"
    _handler_id = logger.add(
        sink or sys.stderr, level=level, serialize=json_lines, backtrace=False, diagnose=False,
        format="<dim>{time:HH:mm:ss.SSS}</dim> <level>{level: <7}</level> {message}")
    logger.enable("modelmesh_core")


_handler_id: int | None = None


def _redact_record(record: Any) -> None:
    record["message"] = redact(record["message"])


# --------------------------------------------------------------------------- output helpers


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    text = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in text:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, indent=2, default=str, sort_keys=False), file=out)


def _config_source(path: str | None) -> str | None:
    """The config file to use: ``--config``, ``$MODELMESH_CONFIG``, ``./modelmesh.yaml``."""
    if path:
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return env
    for name in _DEFAULT_FILES:
        if Path(name).is_file():
            return name
    return None


def _mesh(config: str | None) -> Any:
    from .mesh import ModelMesh

    return ModelMesh(_config_source(config))


async def _with_mesh(config: str | None, fn: Callable[[Any], Any]) -> Any:
    mesh = _mesh(config)
    await mesh.initialize()
    try:
        result = fn(mesh)
        if asyncio.iscoroutine(result):
            result = await result
        return result
    finally:
        await mesh.shutdown()


# --------------------------------------------------------------------------- commands


_PER_PROCESS_STORES = ("modelmesh.memory.v1", "modelmesh.local-file.v1")


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Run the proxy (optionally as several processes sharing the port)."""
    workers = max(1, args.workers)
    from .server import serve

    mesh = _mesh(args.config)
    if not args.worker:
        if mesh.validate()["providers"] == 0:
            print("modelmesh: warning: no provider is configured or detected from the "
                  "environment (set OPENAI_API_KEY, GROQ_API_KEY, … or pass --config); "
                  "requests will fail until one is", file=sys.stderr, flush=True)
        cfg = mesh.validated_config.proxy
        bind = args.host or cfg.host
        if not (cfg.auth.keys or cfg.auth.admin_keys) and bind not in (
                "127.0.0.1", "localhost", "::1"):
            print(f"modelmesh: warning: listening on {bind} with no proxy.auth keys: anyone "
                  "who can reach this port can use your providers (the admin API stays off "
                  "without an admin key)", file=sys.stderr, flush=True)
        if workers > 1:
            store = mesh.validated_config.storage.connector
            if store in _PER_PROCESS_STORES:
                print(f"modelmesh: error: --workers {workers} with storage {store!r} would run "
                      f"{workers} independent states (every limit, budget, cooldown and "
                      "virtual-key counter applied per worker). Share them: set\n"
                      "  storage: {connector: modelmesh.sqlite.v1, config: {path: "
                      ".modelmesh/state.db}}\n"
                      "(or modelmesh.redis.v1 with a url, for several machines), or run "
                      "one worker.", file=sys.stderr, flush=True)
                return 2
            port = args.port if args.port is not None else cfg.port
            return _run_workers(args, workers, bind, port, out)
    host = args.host
    port = args.port

    def banner(*parts: Any, **_: Any) -> None:
        if not args.worker:
            print(*parts, file=out, flush=True)

    try:
        serve(mesh, host=host, port=port, reuse_port=bool(args.worker), print_banner=banner,
              loop=args.loop)
    except OSError as exc:
        print(f"modelmesh: cannot listen on {host or 'the configured address'}:"
              f"{port if port is not None else ''}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return 1
    return 0


def _run_workers(args: argparse.Namespace, workers: int, host: str, port: int,
                 out: TextIO) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        logger.warning("SO_REUSEPORT is not available on this platform; running one worker")
        args.workers = 1
        return cmd_serve(args, out)
    if port == 0:
        print("error: --workers needs a fixed --port (the workers share it)", file=sys.stderr)
        return 2
    base = [sys.executable, "-m", "modelmesh_core.cli"]
    if args.verbose:
        base.append("-" + "v" * args.verbose)
    if args.log_json:
        base.append("--log-json")
    base += ["serve", "--worker", "--workers", "1", "--loop", args.loop]
    if args.config:
        base += ["--config", args.config]
    if args.host:
        base += ["--host", args.host]
    if args.port is not None:
        base += ["--port", str(args.port)]
    children = [subprocess.Popen(base) for _ in range(workers)]
    shown = f"[{host}]" if ":" in host else host
    print(f"modelmesh: serving on http://{shown}:{port} with {workers} workers "
          f"(pids {', '.join(str(c.pid) for c in children)})", file=out, flush=True)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max((c for c in codes if c > 0), default=0)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Validate a config: schema first, then everything the mesh checks while building."""
    from .errors import ConfigError, ModelMeshError

    path = args.config_file
    try:
        summary = asyncio.run(_check(path))
    except ConfigError as exc:
        count = len(exc.errors)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=out)
        for line in exc.errors:
            print(f"  {redact(line)}", file=out)
        return 1
    except ModelMeshError as exc:
        print(f"{path}: 1 problem", file=out)
        print(f"  {redact(str(exc))}", file=out)
        return 1
    print(f"{path}: OK ({summary})", file=out)
    return 0


_ENTRY_SECTIONS = ("providers", "models", "pools")


async def _check(path: str) -> str:
    """Validate ``path`` against the installed plugins; every problem in one ConfigError.

    Nothing is started and nothing is sent: secrets resolve through the configured store.
    """
    from .errors import ConfigError
    from .mesh import ModelMesh

    if not Path(path).is_file():
        raise ConfigError([f"(file): {path} does not exist"])
    counts = ModelMesh(path).validate()
    return f"{counts['providers']} providers, {counts['models']} models, {counts['pools']} pools"


def _options(args: argparse.Namespace) -> Any:
    from .types import RoutingOptions

    return RoutingOptions(
        delivery_mode="streaming" if getattr(args, "stream", False) else None,
        preferred_provider=getattr(args, "provider", None),
    )


def cmd_route(args: argparse.Namespace, out: TextIO) -> int:
    """Print the routing decision for a name."""
    async def run(mesh: Any) -> Any:
        return await mesh.router.route(args.name, _options(args))

    decision = asyncio.run(_with_mesh(args.config, run))
    data = {"name": args.name, "model": decision.model_id, "provider": decision.provider_id,
            "pool": decision.pool_id, "score": decision.score,
            "fallback_chain": list(decision.fallback_chain), "dropped": dict(decision.reasons)}
    if args.json:
        _json(data, out)
        return 0
    print(f"{args.name} -> {decision.model_id} (provider {decision.provider_id}, "
          f"pool {decision.pool_id}, score {decision.score:.3g})", file=out)
    if decision.fallback_chain:
        print("fallback: " + " -> ".join(decision.fallback_chain), file=out)
    for model, why in decision.reasons.items():
        print(f"dropped {model}: {why}", file=out)
    return 0


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    """Explain the routing of one request in detail."""
    from .types import CompletionRequest

    request = CompletionRequest(messages=[{"role": "user", "content": args.message}],
                                stream=args.stream)

    async def run(mesh: Any) -> Any:
        return await mesh.router.explain(args.name, request, _options(args))

    data = asyncio.run(_with_mesh(args.config, run))
    if args.json:
        _json(data, out)
        return 0
    for key in ("capability", "capability_path", "pool", "strategy", "selected", "provider",
                "score", "delivery_mode", "required_features", "estimated_prompt_tokens"):
        if key in data:
            print(f"{key:>24}: {data[key]}", file=out)
    chain = data.get("fallback_chain") or []
    print(f"{'fallback_chain':>24}: {' -> '.join(chain) or '(none)'}", file=out)
    scores = data.get("scores") or {}
    if scores:
        print("scores:", file=out)
        for model, score in scores.items():
            print(f"  {model}: {score:.4g}", file=out)
    dropped = data.get("dropped") or {}
    if dropped:
        print("dropped:", file=out)
        for model, why in dropped.items():
            print(f"  {model}: {why}", file=out)
    stages = data.get("stages")
    if stages:
        print(f"stages: {' -> '.join(stages)}", file=out)
    return 0


def cmd_pools(args: argparse.Namespace, out: TextIO) -> int:
    """List pools with their capability, strategy and members."""
    def collect(mesh: Any) -> Any:
        status = mesh.pool_status()
        rows = []
        for name, pool in mesh.pools.items():
            rows.append({"pool": name, "capability": pool.capability,
                         "strategy": pool.strategy_name, "mode": pool.mode,
                         "models": list(pool.model_ids)})
        return rows, status

    rows, status = asyncio.run(_with_mesh(args.config, collect))
    if args.json:
        _json({"pools": rows, "status": status}, out)
        return 0
    if not rows:
        _nothing_configured("pools", args.config)
        return 0
    _table([(r["pool"], r["capability"] or "(explicit)", r["strategy"], r["mode"],
             ", ".join(r["models"])) for r in rows],
           ("POOL", "CAPABILITY", "STRATEGY", "MODE", "MODELS"), out)
    return 0


def _nothing_configured(what: str, config: str | None) -> None:
    source = _config_source(config)
    where = (f"{source} configures no provider with models" if source else
             "no config file was found and no provider was detected from the environment")
    print(f"no {what}: {where}.\n"
          "  - set OPENAI_API_KEY (or GROQ_API_KEY, MISTRAL_API_KEY, …), or pass --config FILE\n"
          "  - to try ModelMesh without keys, run `modelmesh fake-upstream` and use the "
          "config it prints", file=sys.stderr)


def cmd_models(args: argparse.Namespace, out: TextIO) -> int:
    """List models with provider, capabilities and pricing."""
    def collect(mesh: Any) -> Any:
        return [{"model": m.id, "provider": m.provider, "upstream_id": m.upstream_id,
                 "capabilities": [c.rsplit(".", 1)[-1] for c in m.capabilities],
                 "context_window": m.context_window,
                 "pricing": {"input": m.pricing.input, "output": m.pricing.output}}
                for m in mesh.models.values()]

    rows = asyncio.run(_with_mesh(args.config, collect))
    if args.json:
        _json(rows, out)
        return 0
    if not rows:
        _nothing_configured("models", args.config)
        return 0
    _table([(r["model"], r["provider"], r["upstream_id"], ", ".join(r["capabilities"]),
             r["context_window"], f"{r['pricing']['input']:g}/{r['pricing']['output']:g}")
            for r in rows],
           ("MODEL", "PROVIDER", "UPSTREAM", "CAPABILITIES", "CONTEXT", "USD/1M IN/OUT"), out)
    return 0


_REGISTRY_TABLES = ("providers", "strategies", "stages", "filters", "secret_stores", "storage",
                   "sinks", "discovery", "middleware", "capabilities")


def _registrations(registry: Any) -> dict[str, dict[str, list[str]]]:
    """plugin name -> {kind: [connector ids]} (capability extensions by path)."""
    out: dict[str, dict[str, list[str]]] = {}
    for table in _REGISTRY_TABLES:
        for key, spec in getattr(registry, table).items():
            out.setdefault(spec.plugin, {}).setdefault(table.replace("_", " "), []).append(key)
    return out


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    """List loaded plugins: name, version, distribution, load status and what each registers."""
    def collect(mesh: Any) -> Any:
        regs = _registrations(mesh.registry)
        return [{"name": r.name, "version": r.version, "distribution": r.distribution,
                 "source": r.source, "status": r.status, "hooks": list(r.hooks),
                 "registers": regs.get(r.name, {}), "error": r.error}
                for r in mesh.registry.report]

    rows = asyncio.run(_with_mesh(args.config, collect))
    if args.json:
        _json(rows, out)
        return 0
    cells = [[r["name"], r["version"] or "-", r["distribution"] or "-", r["source"]]
             for r in rows]
    used = sum(max(len(h), *(len(c[i]) for c in cells)) + 2
               for i, h in enumerate(("PLUGIN", "VERSION", "DISTRIBUTION", "SOURCE")))
    room = max(shutil.get_terminal_size((100, 24)).columns - used, 12)
    for cell, r in zip(cells, rows, strict=True):
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        cell.append(_clip(status, room))
    _table(cells, ("PLUGIN", "VERSION", "DISTRIBUTION", "SOURCE", "STATUS"), out)
    print("\nregistered connectors:", file=out)
    for r in rows:
        if not r["registers"]:
            continue
        print(f"  {r['name']}", file=out)
        for kind, names in r["registers"].items():
            print(f"    {kind}: {', '.join(names)}", file=out)
    failed = [r for r in rows if r["error"]]
    if failed:
        print("\nload errors:", file=out)
        for r in failed:
            print(f"  {r['name']} ({r['distribution'] or '?'}): {redact(r['error'])}", file=out)
    return 0


def cmd_capabilities(args: argparse.Namespace, out: TextIO) -> int:
    """List, search or draw the capability tree (no config or network needed)."""
    from .capabilities import CapabilityTree

    tree = CapabilityTree()
    if args.search:
        found = tree.search(args.search)
        if args.json:
            _json(found, out)
        else:
            for path in found:
                print(path, file=out)
        return 0 if found else 1
    if args.tree:
        data = tree.tree()
        if args.json:
            _json(data, out)
        else:
            _draw(data, "", out)
        return 0
    aliases = tree.aliases()
    by_path: dict[str, list[str]] = {}
    for alias, path in aliases.items():
        by_path.setdefault(path, []).append(alias)
    paths = tree.list_all()
    if args.json:
        _json({"capabilities": paths, "aliases": aliases}, out)
        return 0
    for path in paths:
        names = by_path.get(path)
        print(path + (f"  (alias: {', '.join(names)})" if names else ""), file=out)
    return 0


def _draw(node: Any, indent: str, out: TextIO) -> None:
    if isinstance(node, dict):
        items = list(node.items())
        for i, (name, child) in enumerate(items):
            last = i == len(items) - 1
            print(f"{indent}{'└── ' if last else '├── '}{name}", file=out)
            _draw(child, indent + ("    " if last else "│   "), out)
    elif isinstance(node, list | tuple):
        for i, name in enumerate(node):
            print(f"{indent}{'└── ' if i == len(node) - 1 else '├── '}{name}", file=out)


def _read_secret_value(name: str) -> str:
    """The value to store: typed at a hidden prompt, or read from a pipe (never argv, which
    other users can see in the process list and the shell keeps in its history)."""
    if sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        value = (sys.stdin.read() if sys.stdin is not None else "").rstrip("\r\n")
    return value


def cmd_secrets(args: argparse.Namespace, out: TextIO) -> int:
    """``secrets set | get | list | rm`` on the configured secret store."""
    from .errors import did_you_mean
    from .mesh import ModelMesh

    store, connector = ModelMesh(_config_source(args.config)).open_secret_store()
    action = args.secrets_command
    lister = getattr(store, "list", None)
    names: list[str] = lister() if callable(lister) else []
    if action in ("set", "rm") and not callable(getattr(store, "set", None)):
        print(f"error: the secret store {connector} is read-only; configure a writable one, "
              "e.g.\n  secrets:\n    connector: modelmesh.encrypted-file.v1\n"
              "    config: {path: ~/.config/modelmesh/secrets.enc}\n"
              "(and set MODELMESH_SECRETS_KEY to a passphrase), or modelmesh.keyring.v1",
              file=sys.stderr)
        return 1
    if action == "list":
        if not callable(lister):
            print(f"error: the secret store {connector} cannot list its secrets",
                  file=sys.stderr)
            return 1
        if args.json:
            _json(names, out)
        else:
            for name in names:
                print(name, file=out)
            if not names:
                print(f"no secrets in {connector}", file=sys.stderr)
        return 0
    name = args.name
    if action == "get":
        value = store.get(name)
        if value is None:
            print(f"error: secret {name!r} is not set in {connector}"
                  f"{did_you_mean(name, names)}", file=sys.stderr)
            return 1
        print(value, file=out)
        return 0
    if action == "set":
        value = _read_secret_value(name)
        if not value:
            print("error: empty value; nothing stored", file=sys.stderr)
            return 1
        store.set(name, value)
        print(f"stored {name} in {connector}", file=out)
        return 0
    try:
        store.delete(name)
    except KeyError:
        print(f"error: secret {name!r} is not set in {connector}{did_you_mean(name, names)}",
              file=sys.stderr)
        return 1
    print(f"removed {name} from {connector}", file=out)
    return 0


def cmd_fake_upstream(args: argparse.Namespace, out: TextIO) -> int:
    """Run the fake OpenAI upstream until interrupted."""
    from .fakeserver import run_fake_upstream

    return run_fake_upstream(host=args.host, port=args.port, scenario=args.scenario,
                             seed=args.seed, api_key=args.api_key, out=out)


def cmd_batch(args: argparse.Namespace, out: TextIO) -> int:
    """Run an OpenAI batch JSONL file through the mesh (resumable)."""
    from .batchfile import run_command

    return run_command(args, out, _mesh)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the self-contained demo (fake upstreams, proxy, openai SDK)."""
    from .demo import run_demo

    return run_demo(requests=args.requests, concurrency=args.concurrency,
                    stream_ratio=args.stream_ratio, seed=args.seed, out=out,
                    progress=not args.no_progress)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``modelmesh``."""
    parser = argparse.ArgumentParser(
        prog="modelmesh",
        description="ModelMesh: capability-driven AI model router with automatic failover.",
    )
    def logging_args(p: argparse.ArgumentParser, default: Any) -> None:
        # The subcommands accept the same flags; SUPPRESS keeps a flag given before the
        # subcommand from being reset by the subparser's default.
        p.add_argument("-v", "--verbose", action="count",
                       default=0 if default is None else default,
                       help="log debug messages to stderr")
        p.add_argument("--log-json", action="store_true",
                       default=False if default is None else default,
                       help="log one JSON object per line (structured logs)")

    logging_args(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    logging_args(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=None,
                       help=f"config file (default: ${CONFIG_ENV}, ./modelmesh.yaml, or "
                            "providers auto-detected from the environment)")

    def json_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")

    p = add("serve", help="run the OpenAI-compatible proxy")
    config_arg(p)
    p.add_argument("--host", default=None, help="bind address (default: proxy.host)")
    p.add_argument("--port", type=int, default=None, help="port (default: proxy.port)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop: uvloop when installed (auto, the default; install the "
                        "'uvloop' extra), or force one")
    p.set_defaults(func=cmd_serve)

    p = add("check", help="validate a config; print every problem with its path")
    p.add_argument("config_file", metavar="CONFIG")
    p.set_defaults(func=cmd_check)

    for name, func, help_ in (("route", cmd_route, "show which model a name routes to"),
                              ("explain", cmd_explain, "explain a routing decision in detail")):
        p = add(name, help=help_)
        p.add_argument("name", metavar="NAME",
                       help="pool, capability alias or path, or model id")
        config_arg(p)
        json_arg(p)
        p.add_argument("--provider", default=None, help="preferred provider")
        p.add_argument("--stream", action="store_true", help="route a streaming request")
        if name == "explain":
            p.add_argument("--message", default="Hello!", help="user message to route")
        p.set_defaults(func=func)

    for name, func, help_ in (("pools", cmd_pools, "list pools"),
                              ("models", cmd_models, "list models"),
                              ("plugins", cmd_plugins, "list plugins and their load status")):
        p = add(name, help=help_)
        config_arg(p)
        json_arg(p)
        p.set_defaults(func=func)

    p = add("capabilities", help="list, search or draw the capability tree")
    p.add_argument("--search", metavar="KW", default=None, help="search by keyword")
    p.add_argument("--tree", action="store_true", help="draw the tree")
    json_arg(p)
    p.set_defaults(func=cmd_capabilities)

    p = add("secrets", help="set, get, list or remove secrets in the configured "
                                         "secret store")
    config_arg(p)
    secrets = p.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    for name, help_ in (("set", "store a secret (value from a hidden prompt or stdin)"),
                        ("get", "print a secret's value"),
                        ("list", "list secret names (never values)"),
                        ("rm", "remove a secret")):
        q = secrets.add_parser(name, help=help_, parents=[common])
        if name != "list":
            q.add_argument("name", metavar="NAME", help="secret name, as in ${secrets:NAME}")
        else:
            json_arg(q)
        q.add_argument("-c", "--config", default=argparse.SUPPRESS,
                       help="config file whose secrets section names the store")
    p.set_defaults(func=cmd_secrets)

    from .fakeserver import add_arguments

    p = add("fake-upstream", help="run a local fake OpenAI server (no keys needed)")
    add_arguments(p)
    p.set_defaults(func=cmd_fake_upstream)

    p = add("batch", help="run an OpenAI batch file (JSONL) through the mesh")
    batch = p.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    q = batch.add_parser("run", parents=[common],
                         help="run every request of the file; results to a JSONL file "
                              "(resumable: run it again after an interruption)")
    q.add_argument("requests", metavar="REQUESTS.jsonl",
                   help="one {custom_id, method, url, body} per line (OpenAI batch input)")
    q.add_argument("-o", "--output", default=None,
                   help="results file (default: REQUESTS.results.jsonl); requests already "
                        "in it are skipped")
    config_arg(q)
    q.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)

    p = add("demo", help="a local demo that needs no API key")
    p.add_argument("--requests", type=int, default=300, help="requests to send (default 300)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--stream-ratio", type=float, default=0.25,
                   help="share of streaming requests (default 0.25)")
    p.add_argument("--seed", type=int, default=7, help="seed of the flaky upstream")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``modelmesh`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    setup_logging(args.verbose, args.log_json)
    from .errors import ConfigError, ModelMeshError, PluginLoadWarning

    try:
        with warnings.catch_warnings():
            # the same message is logged to stderr above; don't print it twice
            warnings.simplefilter("ignore", PluginLoadWarning)
            return int(args.func(args, out) or 0)
    except ConfigError as exc:
        print("error: invalid configuration:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {redact(line)}", file=sys.stderr)
        return 1
    except ModelMeshError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
