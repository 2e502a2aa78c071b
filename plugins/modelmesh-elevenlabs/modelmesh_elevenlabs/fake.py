"""A local fake of ElevenLabs' ``POST /v1/text-to-speech/{voice_id}`` (``xi-api-key``;
errors ``{"detail": {"status", "message"}}``; validation errors as a 422 ``detail`` list).

The audio is deterministic (``modelmesh_core.fakes.fake_audio``) and sent chunked, with a
``x-character-count`` header; unknown voices are 404 ``voice_not_found``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelmesh_core.fakes import fake_audio
from modelmesh_core.vendor_fake import VendorFake

__all__ = ["FakeElevenLabs"]

_MEDIA = {"mp3": "audio/mpeg", "pcm": "audio/pcm", "opus": "audio/opus", "wav": "audio/wav"}


class FakeElevenLabs(VendorFake):
    """ElevenLabs' text-to-speech API for the voices in ``voices``."""

    vendor = "ElevenLabs"

    def __init__(self, *, api_keys: set[str] | None = None,
                 voices: tuple[str, ...] = ("21m00Tcm4TlvDq8ikWAM",)) -> None:
        super().__init__(api_keys=api_keys)
        self.voices = voices

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}", self._tts)

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("xi-api-key")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {401: "invalid_api_key", 429: "too_many_concurrent_requests"}.get(
            status, "system_busy" if status >= 500 else "invalid_request")
        return {"detail": {"status": kind, "message": message}}

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        voice = request.match_info["voice_id"]
        if voice not in self.voices:
            return self.json({"detail": {"status": "voice_not_found",
                                         "message": f"A voice with voice_id {voice} was not "
                                                    "found."}}, status=404)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return self.json({"detail": [{"loc": ["body", "text"], "msg": "field required",
                                          "type": "value_error.missing"}]}, status=422)
        fmt = request.query.get("output_format", "mp3_44100_128").split("_")[0]
        audio = fake_audio(text, voice, fmt)
        resp = web.StreamResponse(headers={"x-character-count": str(len(text)),
                                           "request-id": "fake-el-1"})
        resp.content_type = _MEDIA.get(fmt, "audio/mpeg")
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        step = max(len(audio) // 3, 1)
        for start in range(0, len(audio), step):
            await resp.write(audio[start:start + step])
        await resp.write_eof()
        return resp
