"""The HTTP adapter toolkit: what every provider adapter's transport does the same way.

A provider adapter subclasses :class:`HTTPAdapter` (or :class:`~modelmesh_core.vendor.VendorHTTP`,
built on it) and keeps only what is the vendor's own: URLs, auth headers, the request body,
the answer's shape, stream framing and the mapping of error bodies. The base supplies:

* deadlines — :func:`bound` (the earlier of ``now + span`` and the call's total deadline, and
  which of the two it is) and :func:`call_window` (a call's start and total deadline);
* the typed errors of the transport, naming the provider and the base URL —
  :meth:`HTTPAdapter.timeout_error`, :meth:`~HTTPAdapter.transport_error` and
  :meth:`~HTTPAdapter.bad_payload` (``api`` names the API the upstream should have looked
  like);
* sending with a ``first_byte`` deadline (:meth:`HTTPAdapter.request`) and bounded body reads
  (:meth:`~HTTPAdapter.read_raw` in one read bounded by ``idle``,
  :meth:`~HTTPAdapter.read_chunked` with ``idle`` per read, :meth:`~HTTPAdapter.json_body`,
  :meth:`~HTTPAdapter.error_body`); a streamed body uses
  :class:`~modelmesh_core.deadlines.ReadDeadline`, :meth:`~HTTPAdapter.stream_failure` and
  :func:`end_stream`;
* header helpers — :func:`parse_retry_after`, :func:`header_int`, :func:`kept_headers` — and
  :class:`KeyRing` for adapters that rotate several API keys.

Timeouts: ``connect`` is aiohttp's ``sock_connect``; ``first_byte``, ``idle`` and ``total`` are
``asyncio.timeout_at`` deadlines around single awaits (never across a ``yield``), so the phase
that fired is always known and reported in ``ProviderTimeoutError.phase``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from yarl import URL

from ._log import logger
from .deadlines import ReadTimeout
from .errors import ProviderError, ProviderTimeoutError, StreamInterruptedError
from .redaction import redact
from .types import ProviderContext, Timeouts

__all__ = [
    "STREAM_READ_ERRORS",
    "HTTPAdapter",
    "KeyRing",
    "SSEFramer",
    "bound",
    "call_window",
    "end_stream",
    "header_int",
    "kept_headers",
    "parse_retry_after",
]

_CHUNK = 64 * 1024

_WHAT = {
    "connect": "could not connect",
    "first_byte": "no response (headers or first stream event)",
    "idle": "the response stalled (no data)",
    "total": "the call did not finish",
}

STREAM_READ_ERRORS = (ReadTimeout, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                      OSError)
"""What reading a streamed body line by line can raise; :meth:`HTTPAdapter.stream_failure`
turns each into the typed error."""


# --------------------------------------------------------------------------- deadlines


def bound(now: float, span: float | None, deadline: float | None) -> tuple[float | None, bool]:
    """The earlier of ``now + span`` and ``deadline``; True when ``deadline`` is the binding one."""
    if span is None:
        return deadline, True
    when = now + span
    if deadline is not None and deadline <= when:
        return deadline, True
    return when, False


def call_window(timeouts: Timeouts) -> tuple[float, float | None]:
    """``(start, deadline)`` of a call beginning now: the loop time and the total deadline."""
    start = asyncio.get_running_loop().time()
    return start, (start + timeouts.total if timeouts.total is not None else None)


# --------------------------------------------------------------------------- headers


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait asked for by ``Retry-After`` (seconds or an HTTP date), else None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


def header_int(value: str | None) -> int | None:
    """A counter header (``"100"``, ``"99.0"``) as an int; None when absent or unparsable."""
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def kept_headers(headers: Mapping[str, str], names: Iterable[str] = (),
                 prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The headers worth keeping on a ``ProviderError``: those named in ``names`` (lower
    case) or starting with one of ``prefixes``, under their lower-case names."""
    wanted = frozenset(names)
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in wanted or (prefixes and lower.startswith(prefixes)):
            kept[lower] = value
    return kept


# --------------------------------------------------------------------------- key rotation


class KeyRing:
    """Several API keys of one provider: the current one is used until it is set aside (a
    rejected key, an exhausted quota), then the next; a set-aside key comes back after its
    cooldown. ``clock`` returns monotonic seconds."""

    __slots__ = ("clock", "current", "errors", "size", "until")

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self.current = 0
        self.until = [0.0] * size
        self.errors: list[ProviderError | None] = [None] * size
        self.clock = clock

    def order(self) -> list[int]:
        """The usable keys' indexes, the current one first (empty when all are set aside)."""
        now = self.clock()
        return [
            i
            for i in ((self.current + step) % self.size for step in range(self.size))
            if self.until[i] <= now
        ]

    def set_aside(self, index: int, seconds: float, error: ProviderError) -> None:
        """Do not use key ``index`` for ``seconds``; ``error`` is why."""
        self.until[index] = self.clock() + seconds
        self.errors[index] = error

    def used(self, index: int) -> None:
        """Key ``index`` worked: keep using it."""
        self.current = index

    def wait(self) -> float:
        """Seconds until the first set-aside key is usable again."""
        return max(min(self.until) - self.clock(), 0.0)


# --------------------------------------------------------------------------- the base


class SSEFramer:
    """Server-sent events, line by line: :meth:`feed` takes each line as read and returns an
    event's ``data`` (its ``data:`` lines joined) at the blank line that ends it. Comments,
    ``event:``, ``id:`` and ``retry:`` lines carry nothing the adapters use."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    @property
    def partial(self) -> bool:
        """An event has begun and not ended (the body stopped inside it)."""
        return bool(self._pending)

    def feed(self, line: bytes) -> bytes | None:
        """Take one line; the event's data when ``line`` ended one, else None."""
        line = line.rstrip(b"\r\n")
        pending = self._pending
        if line:
            if line.startswith(b"data:"):
                pending.append(line[6:] if line[5:6] == b" " else line[5:])
            return None
        if not pending:
            return None
        event = pending[0] if len(pending) == 1 else b"\n".join(pending)
        pending.clear()
        return event


class HTTPAdapter:
    """The transport half of a provider adapter (see the module docstring).

    Args:
        context: what the core hands the provider factory (name, shared session, JSON codec).
        base_url: the upstream's base URL, named in errors (no trailing slash).
        api: what the upstream should look like, for :meth:`bad_payload`
            (``"Anthropic's Messages API"``).
    """

    def __init__(self, context: ProviderContext, *, base_url: str, api: str) -> None:
        self.name = context.name
        self.base_url = base_url
        self.api = api
        self._session = context.session
        self._dumps: Callable[[Any], bytes] = context.json_dumps
        self._loads: Callable[[bytes | str], Any] = context.json_loads
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    # ------------------------------------------------------------------ errors

    def timeout_error(self, phase: str, model_id: str | None,
                      timeouts: Timeouts) -> ProviderError:
        """The call overran its ``phase`` timeout (``connect``, ``first_byte``, ``idle``,
        ``total``)."""
        return ProviderTimeoutError(
            f"{_WHAT[phase]} within the {phase} timeout of {getattr(timeouts, phase)}s; raise "
            f"timeouts.{phase} for this provider or let the router fail over",
            phase=phase,
            provider_id=self.name,
            model_id=model_id,
        )

    def transport_error(self, exc: BaseException, model_id: str | None, *,
                        interrupted: bool = False) -> ProviderError:
        """A connection or body failure (retryable); ``interrupted`` when a stream broke."""
        kind = StreamInterruptedError if interrupted else ProviderError
        detail = redact(str(exc)) or type(exc).__name__
        return kind(
            f"{'stream interrupted: ' if interrupted else ''}{type(exc).__name__}: {detail} "
            f"(base URL {self.base_url}); check that the upstream is reachable",
            provider_id=self.name,
            model_id=model_id,
            retryable=True,
        )

    def bad_payload(self, problem: str, model_id: str | None,
                    status: int | None = 200) -> ProviderError:
        """An answer that is not what the API documents (retryable)."""
        return ProviderError(
            f"{problem}; the upstream at {self.base_url} does not look like {self.api} "
            "(check base_url)",
            provider_id=self.name,
            model_id=model_id,
            status=status,
            retryable=True,
        )

    def stream_failure(self, exc: BaseException, model_id: str | None,
                       timeouts: Timeouts) -> ProviderError:
        """The typed error for one of :data:`STREAM_READ_ERRORS` raised by a stream read."""
        if isinstance(exc, ReadTimeout):
            return self.timeout_error(exc.phase, model_id, timeouts)
        return self.transport_error(exc, model_id, interrupted=True)

    # ------------------------------------------------------------------ sending

    def client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        """The (cached) aiohttp timeout of a request: ``sock_connect`` only; the other
        bounds are deadlines taken around single awaits."""
        cached = self._client_timeouts.get(timeouts)
        if cached is None:
            cached = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=timeouts.connect, sock_read=None
            )
            self._client_timeouts[timeouts] = cached
        return cached

    async def request(self, method: str, url: URL | str, data: bytes | None,
                      headers: Mapping[str, str], timeouts: Timeouts, model_id: str | None,
                      start: float, deadline: float | None,
                      params: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """Send once; the response, whatever its status, once its headers arrived within
        ``first_byte`` from ``start`` (and before ``deadline``). Timeouts and connection
        failures raise the typed errors."""
        when, is_total = bound(start, timeouts.first_byte, deadline)
        try:
            async with asyncio.timeout_at(when) as cm:
                return await self._session().request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    params=params,
                    timeout=self.client_timeout(timeouts),
                    raise_for_status=False,
                )
        except TimeoutError as exc:
            if not cm.expired() and isinstance(exc, aiohttp.ServerTimeoutError):
                raise self.timeout_error("connect", model_id, timeouts) from None
            phase = "total" if is_total else "first_byte"
            raise self.timeout_error(phase, model_id, timeouts) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self.transport_error(exc, model_id) from None

    async def send_checked(self, method: str, url: URL | str, data: bytes | None,
                           headers: Mapping[str, str], timeouts: Timeouts,
                           model_id: str | None, start: float, deadline: float | None, *,
                           error_from: Callable[..., ProviderError],
                           prefill: bool = False) -> aiohttp.ClientResponse:
        """:meth:`request`, then: a response below 400 is returned (headers received); any
        other raises ``error_from(status, body, headers, model_id, prefill=prefill)``, the
        vendor's own mapping of an error answer."""
        resp = await self.request(method, url, data, headers, timeouts, model_id, start,
                                  deadline)
        if resp.status < 400:
            return resp
        raw = await self.error_body(resp, timeouts, deadline)
        logger.opt(lazy=True).debug("{} answered HTTP {}", lambda: self.name,
                                    lambda: resp.status)
        raise error_from(resp.status, raw, resp.headers, model_id, prefill=prefill)

    # ------------------------------------------------------------------ reading

    async def error_body(self, resp: aiohttp.ClientResponse, timeouts: Timeouts,
                         deadline: float | None) -> bytes:
        """The body of an error answer, best effort (``b""`` when it cannot be read within
        ``idle``); releases the response."""
        when, _ = bound(asyncio.get_running_loop().time(), timeouts.idle, deadline)
        raw = b""
        try:
            async with asyncio.timeout_at(when):
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            resp.close()
        finally:
            resp.release()
        return raw

    async def read_raw(self, resp: aiohttp.ClientResponse, timeouts: Timeouts,
                       model_id: str | None, deadline: float | None) -> bytes:
        """The whole body in one read bounded by ``idle`` (and ``deadline``); releases the
        response."""
        when, is_total = bound(asyncio.get_running_loop().time(), timeouts.idle, deadline)
        try:
            async with asyncio.timeout_at(when):
                return await resp.read()
        except TimeoutError:
            resp.close()
            raise self.timeout_error("total" if is_total else "idle", model_id, timeouts) from None
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            raise self.transport_error(exc, model_id) from None
        finally:
            resp.release()

    async def read_chunked(self, resp: aiohttp.ClientResponse, timeouts: Timeouts,
                           model_id: str | None, deadline: float | None, *,
                           interrupted: bool = False) -> bytes:
        """The whole body, each read bounded by ``idle`` (and ``deadline``): a large body
        may take longer than ``idle`` as long as it keeps coming. A cut body raises
        (retryable; ``interrupted`` makes it a ``StreamInterruptedError``), never returns
        short. Releases the response."""
        loop = asyncio.get_running_loop()
        read = resp.content.read
        parts: list[bytes] = []
        try:
            while True:
                when, is_total = bound(loop.time(), timeouts.idle, deadline)
                try:
                    async with asyncio.timeout_at(when):
                        chunk = await read(_CHUNK)
                except TimeoutError:
                    resp.close()
                    raise self.timeout_error("total" if is_total else "idle", model_id,
                                             timeouts) from None
                except (aiohttp.ClientError, OSError) as exc:
                    resp.close()
                    raise self.transport_error(exc, model_id, interrupted=interrupted) from None
                if not chunk:
                    break
                parts.append(chunk)
        finally:
            resp.release()
        return b"".join(parts)

    def decode_json(self, raw: bytes, content_type: str, model_id: str | None) -> Any:
        """A 2xx body as JSON: a content type without ``json`` or malformed JSON is a
        :meth:`bad_payload`."""
        if "json" not in content_type:
            raise self.bad_payload(
                f"expected a JSON answer, got content type {content_type or 'none'!r}", model_id
            )
        try:
            return self._loads(raw)
        except ValueError:
            raise self.bad_payload(
                f"the answer is not valid JSON ({len(raw)} bytes)", model_id
            ) from None

    async def json_body(self, resp: aiohttp.ClientResponse, timeouts: Timeouts,
                        model_id: str | None, deadline: float | None) -> Any:
        """:meth:`read_raw`, then :meth:`decode_json`."""
        raw = await self.read_raw(resp, timeouts, model_id, deadline)
        return self.decode_json(raw, resp.headers.get("Content-Type", ""), model_id)


async def end_stream(resp: aiohttp.ClientResponse, finished: bool) -> None:
    """Let go of a streamed response: after its terminal event (``finished``) drain what
    is left of the chunked body (briefly) so the connection can be reused, else close it."""
    content = resp.content
    if finished and not content.at_eof():
        try:
            async with asyncio.timeout(0.05):
                await content.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            resp.close()
    if finished:
        resp.release()
    else:
        resp.close()
