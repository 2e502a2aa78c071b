"""The proxy routes of the operations beyond chat and embeddings.

=============================== ========================================================
route                           answers
=============================== ========================================================
``POST /v1/images/generations`` OpenAI's images object (``url`` or ``b64_json``)
``POST /v1/audio/speech``       the audio bytes (``audio/mpeg`` …), sent chunked
``POST /v1/audio/transcriptions`` OpenAI's transcript (JSON, or text for ``text`` /
                                ``srt`` / ``vtt``); multipart upload
``POST /v1/audio/translations`` the same, translated to English
``POST /v1/moderations``        OpenAI's moderation object
``POST /v1/rerank``             Cohere's and Jina's rerank shape
``POST /v1/search``             ModelMesh's search object (docs/architecture.md)
``POST /v1/scrape``             ModelMesh's page object (docs/architecture.md)
=============================== ========================================================

Every route authenticates, checks the key's pools, routes by capability through
``Router.run`` (failover, budgets, events) and answers with the ``x-modelmesh-*`` headers.
An upload beyond ``proxy.limits.max_upload_size`` is a 413 before anything goes upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..operations import SpeechResponse
from ..wire import WireError, dumps
from ..wire_ops import (
    image_to_dict,
    moderation_to_dict,
    parse_image_request,
    parse_moderation_request,
    parse_rerank_request,
    parse_scrape_request,
    parse_search_request,
    parse_speech_request,
    parse_transcription_request,
    rerank_to_dict,
    scrape_to_dict,
    search_to_dict,
    transcription_body,
)
from .errors import REQUEST_ID

if TYPE_CHECKING:
    from .routes import ProxyServer

__all__ = ["OperationRoutes", "add_operation_routes"]

_JSON = "application/json"
_AUDIO_CHUNK = 64 * 1024
_MAX_FIELDS = 64
_MAX_FIELD_SIZE = 64 * 1024


def _too_large_upload(limit: int) -> WireError:
    return WireError(f"The upload is larger than the limit of {limit} bytes "
                     "(proxy.limits.max_upload_size).", status=413, code="request_too_large",
                     param="file")


class OperationRoutes:
    """The handlers, over the :class:`~modelmesh_core.server.routes.ProxyServer` they share
    auth, limits, options and headers with."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    # ------------------------------------------------------------------ JSON operations

    async def _json_operation(self, request: web.Request, parse: Callable[[Any], Any],
                              operation: str) -> tuple[Any, Any]:
        server = self.server
        key, body = await server._admit(request)
        name, op_request = parse(body)
        options = server.options(request, key)
        if key is not None and key.pools is not None:
            await server.authorize_pool(key, name, options)
        resp = await server._limited(server._router().run(operation, name, op_request,
                                                          options))
        server._charge(key, resp.metadata.get("cost"))
        return op_request, resp

    def _answer(self, request: web.Request, resp: Any, body: Any) -> web.Response:
        return web.Response(body=dumps(body), content_type=_JSON,
                            headers=self.server.result_headers(resp, request[REQUEST_ID]))

    async def images(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/images/generations``."""
        _, resp = await self._json_operation(request, parse_image_request, "image")
        return self._answer(request, resp, image_to_dict(resp))

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/moderations``."""
        _, resp = await self._json_operation(request, parse_moderation_request, "moderation")
        return self._answer(request, resp, moderation_to_dict(resp))

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/rerank`` (Cohere / Jina shape)."""
        req, resp = await self._json_operation(request, parse_rerank_request, "rerank")
        return self._answer(request, resp,
                            rerank_to_dict(resp, req.metadata.get("return_documents", True)))

    async def search(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/search``."""
        _, resp = await self._json_operation(request, parse_search_request, "search")
        return self._answer(request, resp, search_to_dict(resp))

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/scrape``."""
        _, resp = await self._json_operation(request, parse_scrape_request, "scrape")
        return self._answer(request, resp, scrape_to_dict(resp))

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/audio/speech``: the audio, written in chunks."""
        _, resp = await self._json_operation(request, parse_speech_request, "speech")
        assert isinstance(resp, SpeechResponse)
        out = web.StreamResponse(
            headers=self.server.result_headers(resp, request[REQUEST_ID]))
        out.content_type = resp.content_type
        out.content_length = len(resp.audio)
        await out.prepare(request)
        audio = memoryview(resp.audio)
        for start in range(0, len(audio), _AUDIO_CHUNK):
            await out.write(audio[start:start + _AUDIO_CHUNK])
        await out.write_eof()
        return out

    # ------------------------------------------------------------------ uploads

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/audio/transcriptions``."""
        return await self._transcribe(request, translate=False)

    async def translations(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/audio/translations``."""
        return await self._transcribe(request, translate=True)

    async def _transcribe(self, request: web.Request, *, translate: bool) -> web.StreamResponse:
        server = self.server
        key = server.auth.authenticate(request)
        if key is not None:
            await server.admit_key(key)
        fields, file = await self._read_form(request)
        name, op_request = parse_transcription_request(fields, file, translate=translate)
        options = server.options(request, key)
        if key is not None and key.pools is not None:
            await server.authorize_pool(key, name, options)
        resp = await server._limited(server._router().run("transcription", name, op_request,
                                                          options))
        server._charge(key, resp.metadata.get("cost"))
        body, ctype = transcription_body(resp)
        headers = server.result_headers(resp, request[REQUEST_ID])
        if isinstance(body, bytes):
            return web.Response(body=body, headers={**headers, "Content-Type": ctype})
        return web.Response(body=dumps(body), content_type=_JSON, headers=headers)

    async def _read_form(
        self, request: web.Request,
    ) -> tuple[dict[str, Any], tuple[bytes, str, str | None] | None]:
        """The multipart form: text fields (repeated names become lists) and the ``file``
        part, read with the upload cap (413 as soon as it is passed) and the body timeout."""
        limit = self.server.max_upload
        length = request.content_length
        if length is not None and length > limit:
            raise _too_large_upload(limit)
        if not request.content_type.startswith("multipart/form-data"):
            raise WireError("Send the audio as multipart/form-data with a 'file' part.",
                            status=415 if request.content_type else 400,
                            code="invalid_content_type")
        fields: dict[str, Any] = {}
        file: tuple[bytes, str, str | None] | None = None
        size = 0
        try:
            async with asyncio.timeout(self.server.body_timeout):
                reader = await request.multipart()
                count = 0
                while (part := await reader.next()) is not None:
                    if not isinstance(part, aiohttp.BodyPartReader):
                        raise WireError("Nested multipart bodies are not supported.",
                                        code="invalid_body")
                    count += 1
                    if count > _MAX_FIELDS:
                        raise WireError(f"More than {_MAX_FIELDS} form fields.",
                                        code="invalid_body")
                    name = part.name or ""
                    if name == "file":
                        chunks: list[bytes] = []
                        while chunk := await part.read_chunk(_AUDIO_CHUNK):
                            size += len(chunk)
                            if size > limit:
                                raise _too_large_upload(limit)
                            chunks.append(chunk)
                        file = (b"".join(chunks), part.filename or "audio",
                                part.headers.get("Content-Type"))
                        continue
                    raw = await part.read()
                    size += len(raw)
                    if size > limit:
                        raise _too_large_upload(limit)
                    if len(raw) > _MAX_FIELD_SIZE:
                        raise WireError(f"Form field {name!r} is too long.", param=name,
                                        code="invalid_value")
                    value = raw.decode("utf-8", "replace")
                    key = name[:-2] if name.endswith("[]") else name
                    if key in fields or name.endswith("[]"):
                        previous = fields.get(name, [])
                        fields[name] = [*(previous if isinstance(previous, list)
                                          else [previous]), value]
                    else:
                        fields[name] = value
        except TimeoutError:
            raise WireError(f"The upload did not arrive within {self.server.body_timeout:g}s "
                            "(proxy.limits.body_timeout).", status=408,
                            code="request_timeout") from None
        except (RequestPayloadError, aiohttp.ClientPayloadError, ValueError):
            raise WireError("The multipart body could not be read.",
                            code="invalid_body") from None
        return fields, file


def add_operation_routes(app: web.Application, server: ProxyServer) -> OperationRoutes:
    """Add the operation routes of the module docstring to ``app``."""
    routes = OperationRoutes(server)
    r = app.router
    r.add_post("/v1/images/generations", routes.images)
    r.add_post("/v1/audio/speech", routes.speech)
    r.add_post("/v1/audio/transcriptions", routes.transcriptions)
    r.add_post("/v1/audio/translations", routes.translations)
    r.add_post("/v1/moderations", routes.moderations)
    r.add_post("/v1/rerank", routes.rerank)
    r.add_post("/v1/search", routes.search)
    r.add_post("/v1/scrape", routes.scrape)
    return routes
