"""The OpenAI operations beyond chat and embeddings: images, speech, transcription and
translation, moderation.

:class:`OperationsMixin` is mixed into :class:`~modelmesh_openai.OpenAIAdapter`; it reuses the
adapter's transport (key rotation, timeouts, error translation) and adds one method per
operation of :mod:`modelmesh_core.operations`:

========================= ================================= =============================
method                    endpoint                          body
========================= ================================= =============================
``images``                ``POST /images/generations``      JSON → JSON (``url`` or
                                                            ``b64_json`` per image)
``speech``                ``POST /audio/speech``            JSON → audio bytes (chunked)
``transcribe``            ``POST /audio/transcriptions``    multipart → JSON or text
                          (``/audio/translations`` when
                          ``request.translate``)
``moderate``              ``POST /moderations``             JSON → JSON
========================= ================================= =============================
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from modelmesh_core.errors import ProviderError
from modelmesh_core.http import HTTPAdapter, call_window
from modelmesh_core.operations import (
    GeneratedImage,
    ImageRequest,
    ImageResponse,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    SpeechRequest,
    SpeechResponse,
    TranscriptionRequest,
    TranscriptionResponse,
)
from modelmesh_core.types import Model, RateLimitInfo, Timeouts

__all__ = ["OperationsMixin", "encode_multipart"]

_AUDIO_TYPES = ("audio/", "application/octet-stream")


def encode_multipart(
    fields: Iterable[tuple[str, str]], file: tuple[str, bytes, str, str],
) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body (fields, then one file part ``(name, data, filename,
    content type)``) and its ``Content-Type`` header. The boundary is random and checked
    not to occur in the data, so the body can be sent again (another key, another try)."""
    name, data, filename, ctype = file
    while True:
        boundary = "----modelmesh" + os.urandom(12).hex()
        marker = boundary.encode()
        if marker not in data:
            break
    parts: list[bytes] = []
    for key, value in fields:
        parts.append(
            b"--" + marker + b"\r\n"
            + f'Content-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode("utf-8") + b"\r\n")
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        b"--" + marker + b"\r\n"
        + f'Content-Disposition: form-data; name="{name}"; filename="{safe_name}"\r\n'.encode()
        + f"Content-Type: {ctype}\r\n\r\n".encode()
        + data + b"\r\n")
    parts.append(b"--" + marker + b"--\r\n")
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _token_usage(raw: Any) -> dict[str, int]:
    """``{input_tokens, output_tokens, total_tokens}`` (images, gpt-4o transcription) in the
    chat names the router bills on."""
    if not isinstance(raw, dict):
        return {}
    if raw.get("type") == "duration":
        seconds = raw.get("seconds")
        return {"seconds": round(float(seconds))} if isinstance(seconds, int | float) else {}
    prompt = int(raw.get("input_tokens") or 0)
    completion = int(raw.get("output_tokens") or 0)
    if not (prompt or completion):
        return {}
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(raw.get("total_tokens") or prompt + completion)}


class OperationsMixin(HTTPAdapter):
    """Images, speech, transcription / translation and moderation over the adapter's
    transport (see the module docstring)."""

    # What the mixin uses of the adapter it is mixed into.
    _azure_deployments: bool
    _query: str
    _headers: list[dict[str, str]]
    _op_urls: dict[tuple[str, str], URL]

    if TYPE_CHECKING:
        async def _send(self, method: str, url: URL, data: bytes | None, timeouts: Timeouts,
                        model_id: str | None, start: float, deadline: float | None,
                        stream: bool, *, headers: list[dict[str, str]] | None = None,
                        ) -> aiohttp.ClientResponse: ...

        @staticmethod
        def _rate_limit(resp: aiohttp.ClientResponse) -> RateLimitInfo | None: ...

    # ------------------------------------------------------------------ hooks for subclasses

    def _op_url(self, upstream_id: str, path: str) -> URL:
        """The URL of ``path`` (``images/generations`` …) for this model, cached."""
        key = (path, upstream_id)
        url = self._op_urls.get(key)
        if url is None:
            if self._azure_deployments:
                url = URL(f"{self.base_url}/deployments/{upstream_id}/{path}{self._query}")
            else:
                url = URL(f"{self.base_url}/{path}")
            self._op_urls[key] = url
        return url

    async def _prepare_call(self) -> None:
        """Called before every operation (Azure refreshes its Entra ID token here)."""

    # ------------------------------------------------------------------ helpers

    async def _json_call(self, model: Model, path: str, body: dict[str, Any],
                         timeouts: Timeouts) -> tuple[Any, aiohttp.ClientResponse, float]:
        await self._prepare_call()
        start, deadline = call_window(timeouts)
        resp = await self._send("POST", self._op_url(model.upstream_id, path),
                                self._dumps(body), timeouts, model.id, start, deadline, False)
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        if not isinstance(payload, dict):
            raise self.bad_payload("the answer is not a JSON object", model.id)
        return payload, resp, start

    # ------------------------------------------------------------------ images

    async def images(self, model: Model, request: ImageRequest,
                     timeouts: Timeouts) -> ImageResponse:
        """``POST /images/generations``; ``response_format`` and ``size`` are sent only when
        the caller gave them (``gpt-image-1`` rejects ``response_format``)."""
        body: dict[str, Any] = dict(request.extra)
        body["model"] = model.upstream_id
        body["prompt"] = request.prompt
        if request.n != 1:
            body["n"] = request.n
        if request.size is not None:
            body["size"] = request.size
        if request.response_format is not None:
            body["response_format"] = request.response_format
        payload, resp, start = await self._json_call(model, "images/generations", body,
                                                     timeouts)
        try:
            images = tuple(
                GeneratedImage(url=item.get("url"), b64_json=item.get("b64_json"),
                               revised_prompt=item.get("revised_prompt"))
                for item in payload["data"])
        except (KeyError, TypeError, AttributeError):
            raise self.bad_payload("the answer has no data[] images", model.id) from None
        if not images or any(i.url is None and i.b64_json is None for i in images):
            raise self.bad_payload("an image has neither url nor b64_json", model.id)
        usage = _token_usage(payload.get("usage"))
        usage["images"] = len(images)
        rate = self._rate_limit(resp)
        return ImageResponse(
            images=images, model=model.id, provider=self.name,
            created=int(payload.get("created") or 0), usage=usage,
            latency_ms=(asyncio.get_running_loop().time() - start) * 1000.0,
            upstream_model=str(payload.get("model") or ""),
            metadata={"rate_limit": rate} if rate is not None else {},
        )

    # ------------------------------------------------------------------ speech

    async def speech(self, model: Model, request: SpeechRequest,
                     timeouts: Timeouts) -> SpeechResponse:
        """``POST /audio/speech``: the audio, read to its end (a cut body is a retryable
        error)."""
        body: dict[str, Any] = dict(request.extra)
        body["model"] = model.upstream_id
        body["input"] = request.input
        body["voice"] = request.voice
        body["response_format"] = request.response_format
        if request.speed is not None:
            body["speed"] = request.speed
        await self._prepare_call()
        start, deadline = call_window(timeouts)
        resp = await self._send("POST", self._op_url(model.upstream_id, "audio/speech"),
                                self._dumps(body), timeouts, model.id, start, deadline, False)
        ctype = resp.headers.get("Content-Type", "")
        if not ctype.startswith(_AUDIO_TYPES):
            resp.close()
            raise self.bad_payload(f"expected audio, got content type {ctype or 'none'!r}",
                                    model.id)
        audio = await self.read_chunked(resp, timeouts, model.id, deadline,
                                        interrupted=True)
        if not audio:
            raise self.bad_payload("the audio answer is empty", model.id)
        rate = self._rate_limit(resp)
        return SpeechResponse(
            audio=audio, content_type=ctype.split(";")[0].strip(), model=model.id,
            provider=self.name, usage={"characters": len(request.input)},
            latency_ms=(asyncio.get_running_loop().time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
        )

    # ------------------------------------------------------------------ transcription

    async def transcribe(self, model: Model, request: TranscriptionRequest,
                         timeouts: Timeouts) -> TranscriptionResponse:
        """``POST /audio/transcriptions`` (``/audio/translations`` when
        ``request.translate``) with the file as a multipart upload."""
        fields: list[tuple[str, str]] = [("model", model.upstream_id)]
        if request.language is not None and not request.translate:
            fields.append(("language", request.language))
        if request.prompt is not None:
            fields.append(("prompt", request.prompt))
        fields.append(("response_format", request.response_format))
        if request.temperature is not None:
            fields.append(("temperature", repr(float(request.temperature))))
        for key, value in request.extra.items():
            values = value if isinstance(value, list) else [value]
            fields.extend((key, v if isinstance(v, str) else self._dumps(v).decode())
                          for v in values)
        data, ctype = encode_multipart(
            fields, ("file", request.file, request.filename,
                     request.content_type or "application/octet-stream"))
        path = "audio/translations" if request.translate else "audio/transcriptions"
        await self._prepare_call()
        start, deadline = call_window(timeouts)
        headers = [{**h, "Content-Type": ctype} for h in self._headers]
        resp = await self._send("POST", self._op_url(model.upstream_id, path), data, timeouts,
                                model.id, start, deadline, False, headers=headers)
        fmt = request.response_format
        verbose: dict[str, Any] | None = None
        language = None
        duration = None
        usage: dict[str, int] = {}
        if fmt in ("text", "srt", "vtt"):
            got = resp.headers.get("Content-Type", "")
            if "json" in got or "html" in got:
                resp.close()
                raise self.bad_payload(f"expected text, got content type {got!r}", model.id)
            raw = await self.read_chunked(resp, timeouts, model.id, deadline, interrupted=True)
            text = raw.decode("utf-8", "replace")
        else:
            payload = await self.json_body(resp, timeouts, model.id, deadline)
            if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
                raise self.bad_payload("the answer has no text", model.id)
            text = payload["text"]
            usage = _token_usage(payload.get("usage"))
            language = payload.get("language")
            raw_duration = payload.get("duration")
            if isinstance(raw_duration, int | float):
                duration = float(raw_duration)
                usage.setdefault("seconds", round(duration))
            if fmt == "verbose_json":
                verbose = payload
        rate = self._rate_limit(resp)
        return TranscriptionResponse(
            text=text, model=model.id, provider=self.name, response_format=fmt,
            language=language if isinstance(language, str) else None, duration=duration,
            verbose=verbose, usage=usage,
            latency_ms=(asyncio.get_running_loop().time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
        )

    # ------------------------------------------------------------------ moderation

    async def moderate(self, model: Model, request: ModerationRequest,
                       timeouts: Timeouts) -> ModerationResponse:
        """``POST /moderations``: one result per input."""
        body: dict[str, Any] = dict(request.extra)
        body["model"] = model.upstream_id
        body["input"] = request.input
        payload, resp, start = await self._json_call(model, "moderations", body, timeouts)
        try:
            results = tuple(
                ModerationResult(
                    flagged=bool(item["flagged"]),
                    categories={str(k): bool(v) for k, v in item["categories"].items()},
                    category_scores={str(k): float(v)
                                     for k, v in item["category_scores"].items()},
                    category_applied_input_types=item.get("category_applied_input_types"),
                )
                for item in payload["results"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.bad_payload("the answer has no results[] verdicts", model.id) from None
        expected = len(request.input) if isinstance(request.input, list) else 1
        if len(results) != expected:
            raise ProviderError(
                f"asked to moderate {expected} inputs, got {len(results)} results",
                provider_id=self.name, model_id=model.id, status=200, retryable=True)
        rate = self._rate_limit(resp)
        return ModerationResponse(
            results=results, model=model.id, provider=self.name,
            id=str(payload.get("id") or ""), upstream_model=str(payload.get("model") or ""),
            latency_ms=(asyncio.get_running_loop().time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
        )
