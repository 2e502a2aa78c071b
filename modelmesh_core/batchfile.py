"""``modelmesh batch run``: an OpenAI batch input file through the mesh, results to a file.

Input is the OpenAI Batch API's JSONL: one request per line,
``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
(``url`` one of ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``; ``body``
what the endpoint takes, ``model`` being a pool, capability or model id). Output is the
Batch API's output shape, one line per request in the order they finish::

    {"id": "batch_req_…", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}

A request that fails has its HTTP status and the OpenAI error body in ``response`` (as the
proxy would have answered). Each line is written and flushed as soon as its request is done,
so an interrupted run (Ctrl-C, SIGTERM, a crash) leaves only complete answers behind, and
running the same command again **resumes**: requests whose ``custom_id`` is already in the
output file are skipped (a half-written last line is removed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import orjson
from attrs import define, frozen

from .errors import ModelMeshError
from .wire import (
    WireError,
    completion_to_dict,
    completion_to_text_completion_dict,
    embeddings_to_dict,
    error_for_exception,
    parse_chat_request,
    parse_completion_request,
    parse_embeddings_request,
)

__all__ = ["BatchFileError", "BatchLine", "BatchSummary", "done_ids", "read_requests",
           "run_batch_file"]

_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_MAX_ERRORS = 20


class BatchFileError(ModelMeshError):
    """The input file is not a valid batch file (``errors`` lists ``line N: …``)."""

    def __init__(self, path: str, errors: list[str]) -> None:
        shown = errors[:_MAX_ERRORS]
        more = f"\n  … and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__(f"{path} is not a valid batch file:\n  " + "\n  ".join(shown) + more)
        self.errors = errors


@frozen(kw_only=True)
class BatchLine:
    """One request of the input file."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@define(kw_only=True)
class BatchSummary:
    """What a run did: ``total`` requests in the file, ``skipped`` (done by an earlier run),
    ``succeeded`` / ``failed`` in this run, and whether it was ``interrupted``."""

    total: int
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    interrupted: bool = False

    @property
    def done(self) -> int:
        """Requests with a result in the output file."""
        return self.skipped + self.succeeded + self.failed


def read_requests(path: str | os.PathLike[str]) -> list[BatchLine]:
    """Parse and check an input file; raise :class:`BatchFileError` listing every problem."""
    errors: list[str] = []
    out: list[BatchLine] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                errors.append(f"line {n}: empty line")
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                errors.append(f"line {n}: not JSON ({exc})")
                continue
            if not isinstance(item, dict):
                errors.append(f"line {n}: not a JSON object")
                continue
            cid = item.get("custom_id")
            if not isinstance(cid, str) or not cid:
                errors.append(f"line {n}: custom_id must be a non-empty string")
                continue
            if cid in seen:
                errors.append(f"line {n}: custom_id {cid!r} is also on line {seen[cid]}")
                continue
            seen[cid] = n
            method = item.get("method", "POST")
            url = item.get("url")
            body = item.get("body")
            if method != "POST":
                errors.append(f"line {n}: method must be POST")
            if url not in _URLS:
                errors.append(f"line {n}: url must be one of {', '.join(_URLS)} (got {url!r})")
            if not isinstance(body, dict):
                errors.append(f"line {n}: body must be a JSON object")
                continue
            extra = sorted(set(item) - {"custom_id", "method", "url", "body"})
            if extra:
                errors.append(f"line {n}: unknown field(s) {', '.join(extra)}")
            out.append(BatchLine(line=n, custom_id=cid, url=str(url), body=body))
    if errors:
        raise BatchFileError(str(path), errors)
    return out


def done_ids(path: str | os.PathLike[str]) -> set[str]:
    """The custom_ids already answered in an output file. A last line cut short by an
    interruption (no newline, or not JSON) is removed from the file."""
    p = Path(path)
    if not p.exists():
        return set()
    data = p.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    ids: set[str] = set()
    for raw in data[:keep].splitlines():
        if not raw.strip():
            continue
        try:
            cid = orjson.loads(raw)["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise BatchFileError(str(path), [f"output line is not a batch result: "
                                             f"{raw[:80]!r}"]) from None
        ids.add(str(cid))
    if keep != len(data):
        with open(p, "r+b") as f:
            f.truncate(keep)
    return ids


async def _answer(mesh: Any, item: BatchLine) -> tuple[int, str, dict[str, Any]]:
    """``(status, request id, body)`` of one request, as the proxy would answer it."""
    router = mesh.router
    request_id = "batch_" + os.urandom(8).hex()
    try:
        from .types import RoutingOptions

        options = RoutingOptions(metadata={"request_id": request_id})
        if item.url == "/v1/embeddings":
            name, ereq = parse_embeddings_request(item.body)
            eresp = await router.embed(name, ereq, options)
            fmt = ereq.metadata.get("encoding_format", "float")
            return 200, request_id, embeddings_to_dict(eresp, fmt)
        if item.url == "/v1/completions":
            name, creq = parse_completion_request(item.body)
        else:
            name, creq = parse_chat_request(item.body)
        if creq.stream:
            raise WireError("stream is not supported in a batch", param="stream",
                            code="invalid_value")
        resp = await router.complete(name, creq, options)
        body = (completion_to_text_completion_dict(resp) if item.url == "/v1/completions"
                else completion_to_dict(resp))
        return 200, request_id, body
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, body, _ = error_for_exception(exc)
        return status, request_id, body


async def run_batch_file(
    mesh: Any, requests: list[BatchLine], output: str | os.PathLike[str], *,
    concurrency: int = 8, on_result: Callable[[BatchSummary], None] | None = None,
    stop: asyncio.Event | None = None,
) -> BatchSummary:
    """Run ``requests`` through ``mesh`` (initialized) with at most ``concurrency`` in
    flight, appending one result line per request to ``output`` (skipping custom_ids already
    there). ``on_result`` is called after each line; setting ``stop`` ends the run early:
    requests in flight are cancelled (they are run again by the next resume)."""
    summary = BatchSummary(total=len(requests))
    already = done_ids(output)
    todo = [r for r in requests if r.custom_id not in already]
    summary.skipped = len(requests) - len(todo)
    stop = stop or asyncio.Event()
    queue: asyncio.Queue[BatchLine] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    with open(output, "ab") as out:
        def write(item: BatchLine, status: int, request_id: str, body: dict[str, Any]) -> None:
            line = {"id": "batch_req_" + os.urandom(12).hex(), "custom_id": item.custom_id,
                    "response": {"status_code": status, "request_id": request_id,
                                 "body": body},
                    "error": None}
            out.write(orjson.dumps(line) + b"\n")
            out.flush()
            if status == 200:
                summary.succeeded += 1
            else:
                summary.failed += 1
            if on_result is not None:
                on_result(summary)

        async def worker() -> None:
            while not stop.is_set():
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                status, request_id, body = await _answer(mesh, item)
                write(item, status, request_id, body)

        workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
        finished: asyncio.Future[Any] = asyncio.gather(*workers)
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([finished, stopper], return_when=asyncio.FIRST_COMPLETED)
            if finished.done():
                finished.result()  # a worker's unexpected error, if any
            else:  # stopped: what is in flight is dropped and runs again on resume
                finished.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await finished
                summary.interrupted = summary.done < summary.total
        finally:
            stopper.cancel()
            finished.cancel()
    return summary


def run_command(args: Any, out: TextIO, mesh_factory: Callable[[str | None], Any]) -> int:
    """``modelmesh batch run`` (see :func:`modelmesh_core.cli.build_parser`)."""
    import sys

    requests = read_requests(args.requests)
    output = args.output or str(Path(args.requests).with_suffix("")) + ".results.jsonl"
    if Path(output).resolve() == Path(args.requests).resolve():
        print("error: the output file must not be the input file", file=sys.stderr)
        return 1

    async def main() -> BatchSummary:
        mesh = mesh_factory(args.config)
        await mesh.initialize()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        progress = _Progress(len(requests), not args.no_progress)
        try:
            progress.start(len(done_ids(output)))
            return await run_batch_file(mesh, requests, output, concurrency=args.concurrency,
                                        on_result=progress.update, stop=stop)
        finally:
            progress.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await mesh.shutdown()

    summary = asyncio.run(main())
    print(f"{summary.done} of {summary.total} requests done "
          f"({summary.succeeded} succeeded and {summary.failed} failed in this run"
          f"{f', {summary.skipped} from an earlier run' if summary.skipped else ''}) "
          f"-> {output}", file=out)
    if summary.interrupted:
        print(f"interrupted: run the same command again to resume "
              f"({summary.total - summary.done} left)", file=sys.stderr)
        return 130
    return 0


class _Progress:
    """A rich progress bar on stderr when rich is installed and wanted; else nothing."""

    def __init__(self, total: int, wanted: bool) -> None:
        self._total = total
        self._bar: Any = None
        self._task: Any = None
        if not wanted:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self._bar = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                             console=Console(stderr=True))

    def start(self, done: int) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task("batch", total=self._total, completed=done,
                                            note="")
            self._bar.start()

    def update(self, summary: BatchSummary) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=summary.done,
                             note=f"{summary.failed} failed" if summary.failed else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
