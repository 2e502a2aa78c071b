"""ModelMesh provider connector for ElevenLabs text to speech: ``elevenlabs.tts.v1``.

``POST /v1/text-to-speech/{voice_id}?output_format=…`` (``xi-api-key``) as the core's
``speech`` operation. The request's ``voice`` is an ElevenLabs voice id, or a name mapped to
one by ``config.voices`` (so OpenAI-style names such as ``alloy`` can be routed here too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from attrs import Factory, frozen

from modelmesh_core.errors import ProviderError
from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.operations import SpeechRequest, SpeechResponse
from modelmesh_core.types import Model, ModelInfo, Pricing, ProviderContext, ProviderSpec, Timeouts
from modelmesh_core.vendor import Deadline, VendorHTTP

__all__ = ["CONNECTOR", "OUTPUT_FORMATS", "ElevenLabsAdapter", "ElevenLabsConfig",
           "modelmesh_providers"]

CONNECTOR = "elevenlabs.tts.v1"
DEFAULT_BASE_URL = "https://api.elevenlabs.io"
ENV_KEY = "ELEVENLABS_API_KEY"

OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3_44100_128", "audio/mpeg"),
    "pcm": ("pcm_24000", "audio/pcm"),
    "opus": ("opus_48000_128", "audio/opus"),
    "wav": ("wav_44100", "audio/wav"),
}
"""OpenAI ``response_format`` → ElevenLabs ``output_format`` and the media type answered
(``aac`` and ``flac`` have no ElevenLabs equivalent: such a request moves on to the next
candidate)."""


@frozen(kw_only=True)
class ElevenLabsConfig:
    """The ``config:`` of ``elevenlabs.tts.v1``.

    Attributes:
        api_key: the key (default ``ELEVENLABS_API_KEY``), sent as ``xi-api-key``.
        base_url: default ``https://api.elevenlabs.io``.
        voices: voice name → ElevenLabs voice id (e.g. ``alloy: 21m00Tcm4TlvDq8ikWAM``).
        voice_settings: sent as ``voice_settings`` (``stability``, ``similarity_boost``, …).
    """

    api_key: str | None = None
    base_url: str | None = None
    voices: dict[str, str] = Factory(dict)
    voice_settings: dict[str, Any] | None = None


class ElevenLabsAdapter(VendorHTTP):
    """``speech`` against ElevenLabs."""

    def __init__(self, context: ProviderContext, config: ElevenLabsConfig | None) -> None:
        config = config or ElevenLabsConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"xi-api-key": key} if key else {}, secrets=(key,),
                         vendor="ElevenLabs")
        self.config = config
        self._audio_accept = {"Accept": "audio/*"}

    def error_message(self, payload: Any, raw: bytes) -> str:
        """ElevenLabs answers ``{"detail": {"status", "message"}}`` or, for validation,
        ``{"detail": [{"loc", "msg", "type"}]}``."""
        if isinstance(payload, dict):
            detail = payload.get("detail")
            if isinstance(detail, dict):
                message = detail.get("message")
                status = detail.get("status")
                if isinstance(message, str):
                    return f"{message} [{status}]" if status else message
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                first = detail[0]
                where = ".".join(str(x) for x in first.get("loc") or ())
                return f"{first.get('msg')} ({where})" if where else str(first.get("msg"))
        return super().error_message(payload, raw)

    async def speech(self, model: Model, request: SpeechRequest,
                     timeouts: Timeouts) -> SpeechResponse:
        """``POST /v1/text-to-speech/{voice_id}`` with ``{"text", "model_id"}``."""
        fmt = OUTPUT_FORMATS.get(request.response_format)
        if fmt is None:
            raise ProviderError(
                f"ElevenLabs has no {request.response_format!r} output; the request moves on "
                "to the next candidate", provider_id=self.name, model_id=model.id, status=404)
        voice = self.config.voices.get(request.voice, request.voice)
        body: dict[str, Any] = {"text": request.input, "model_id": model.upstream_id}
        settings = dict(self.config.voice_settings or {})
        if request.speed is not None:
            settings["speed"] = request.speed
        if settings:
            body["voice_settings"] = settings
        for key in ("language_code", "seed", "previous_text", "next_text"):
            if key in request.extra:
                body[key] = request.extra[key]
        url = f"{self.base_url}/v1/text-to-speech/{quote(voice, safe='')}"
        deadline = Deadline(timeouts)
        resp = await self.send("POST", url, model_id=model.id, timeouts=timeouts,
                               deadline=deadline, json=body, headers=self._audio_accept,
                               params={"output_format": fmt[0]})
        ctype = resp.headers.get("Content-Type", "")
        if not ctype.startswith(("audio/", "application/octet-stream")):
            resp.close()
            raise self.bad_payload(f"expected audio, got content type {ctype or 'none'!r}",
                                   model.id)
        audio = await self.read_bytes(resp, model_id=model.id, timeouts=timeouts,
                                      deadline=deadline)
        if not audio:
            raise self.bad_payload("the audio answer is empty", model.id)
        try:
            characters = int(resp.headers.get("x-character-count") or len(request.input))
        except ValueError:
            characters = len(request.input)
        return SpeechResponse(audio=audio, content_type=fmt[1], model=model.id,
                              provider=self.name, usage={"characters": characters})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """``GET /v1/models``: the model ids."""
        payload = await self.call_json("GET", f"{self.base_url}/v1/models", model_id=None,
                                       timeouts=timeouts)
        return [str(m) for m in payload.get("model_ids", [])]


CATALOGUE = tuple(
    ModelInfo(name=name, capabilities=("generation.audio-generation.text-to-speech",),
              delivery_modes=frozenset({"sync"}), context_window=ctx, pricing=Pricing())
    for name, ctx in (("eleven_multilingual_v2", 10_000), ("eleven_flash_v2_5", 40_000),
                      ("eleven_turbo_v2_5", 40_000)))
"""ElevenLabs bills characters by plan, which per-token prices cannot express: set
``models.<id>.pricing.per_request`` to your average."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``elevenlabs.tts.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=ElevenLabsAdapter,
                         config_type=ElevenLabsConfig, env_vars=(ENV_KEY,),
                         default_base_url=DEFAULT_BASE_URL, catalogue=CATALOGUE,
                         auth="header:xi-api-key", description="ElevenLabs text to speech")]
