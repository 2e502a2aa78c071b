"""ModelMesh provider connector for AssemblyAI speech to text: ``assemblyai.stt.v1``.

The core's ``transcription`` operation in AssemblyAI's three steps: ``POST /v2/upload`` (the
audio bytes) → ``upload_url``; ``POST /v2/transcript`` ``{"audio_url", "speech_model"}`` →
an id; ``GET /v2/transcript/{id}`` every ``poll_interval`` until ``completed`` (or
``error``), all within the attempt's ``total`` timeout. ``srt`` / ``vtt`` answers come from
``GET /v2/transcript/{id}/srt|vtt``. AssemblyAI does not translate: a translation request
moves on to the next candidate.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from yarl import URL

from modelmesh_core.config import Duration
from modelmesh_core.errors import ProviderError
from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.operations import TranscriptionRequest, TranscriptionResponse
from modelmesh_core.types import Model, ModelInfo, Pricing, ProviderContext, ProviderSpec, Timeouts
from modelmesh_core.vendor import Deadline, VendorHTTP

__all__ = ["CONNECTOR", "AssemblyAIAdapter", "AssemblyAIConfig", "modelmesh_providers"]

CONNECTOR = "assemblyai.stt.v1"
DEFAULT_BASE_URL = "https://api.assemblyai.com"
ENV_KEY = "ASSEMBLYAI_API_KEY"


@frozen(kw_only=True)
class AssemblyAIConfig:
    """The ``config:`` of ``assemblyai.stt.v1``.

    Attributes:
        api_key: the key (default ``ASSEMBLYAI_API_KEY``), sent as ``authorization``.
        base_url: default ``https://api.assemblyai.com`` (``https://api.eu.assemblyai.com``
            for the EU).
        poll_interval: seconds between two status reads of a transcript.
    """

    api_key: str | None = None
    base_url: str | None = None
    poll_interval: Duration = Duration(1.0)


class AssemblyAIAdapter(VendorHTTP):
    """``transcribe`` against AssemblyAI (upload, create, poll)."""

    def __init__(self, context: ProviderContext, config: AssemblyAIConfig | None) -> None:
        config = config or AssemblyAIConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"authorization": key} if key else {}, secrets=(key,),
                         vendor="AssemblyAI")
        self.config = config
        self._upload = URL(f"{self.base_url}/v2/upload")
        self._transcript = URL(f"{self.base_url}/v2/transcript")
        self._octets = {"Content-Type": "application/octet-stream"}

    async def transcribe(self, model: Model, request: TranscriptionRequest,
                         timeouts: Timeouts) -> TranscriptionResponse:
        """Upload, create the transcript, poll until it is done."""
        if request.translate:
            raise ProviderError("AssemblyAI does not translate audio; the request moves on "
                                "to the next candidate", provider_id=self.name,
                                model_id=model.id, status=404)
        deadline = Deadline(timeouts)
        uploaded = await self.call_json("POST", self._upload, model_id=model.id,
                                        timeouts=timeouts, deadline=deadline,
                                        data=request.file, headers=self._octets)
        audio_url = uploaded.get("upload_url")
        if not isinstance(audio_url, str):
            raise self.bad_payload("the upload answer has no upload_url", model.id)
        body: dict[str, Any] = {"audio_url": audio_url, "speech_model": model.upstream_id}
        if request.language:
            body["language_code"] = request.language
        else:
            body["language_detection"] = True
        if request.prompt:
            body["word_boost"] = request.prompt.split()[:100]
        created = await self.call_json("POST", self._transcript, model_id=model.id,
                                       timeouts=timeouts, deadline=deadline, json=body)
        tid = created.get("id")
        if not isinstance(tid, str) or not tid:
            raise self.bad_payload("the transcript answer has no id", model.id)
        status_url = self._transcript / tid
        payload = created
        while payload.get("status") not in ("completed", "error"):
            await asyncio.sleep(float(self.config.poll_interval))
            if deadline.end is not None and deadline.loop.time() >= deadline.end:
                raise self.timeout_error("total", model.id, timeouts)
            payload = await self.call_json("GET", status_url, model_id=model.id,
                                           timeouts=timeouts, deadline=deadline)
        if payload["status"] == "error":
            # AssemblyAI's transcription errors are about the audio (not audio, too short…)
            raise ProviderError(f"transcription failed: {payload.get('error')}",
                                provider_id=self.name, model_id=model.id, status=400)
        text = payload.get("text")
        if not isinstance(text, str):
            raise self.bad_payload("the completed transcript has no text", model.id)
        fmt = request.response_format
        if fmt in ("srt", "vtt"):
            resp = await self.send("GET", status_url / fmt, model_id=model.id,
                                   timeouts=timeouts, deadline=deadline)
            text = (await self.read_bytes(resp, model_id=model.id, timeouts=timeouts,
                                          deadline=deadline)).decode("utf-8", "replace")
        duration = payload.get("audio_duration")
        seconds = float(duration) if isinstance(duration, int | float) else None
        language = payload.get("language_code")
        verbose = None
        if fmt == "verbose_json":
            verbose = {"task": "transcribe", "language": language or "",
                       "duration": seconds or 0.0, "text": text,
                       "words": payload.get("words") or []}
        return TranscriptionResponse(
            text=text, model=model.id, provider=self.name, response_format=fmt,
            language=language if isinstance(language, str) else None, duration=seconds,
            verbose=verbose, usage={"seconds": round(seconds)} if seconds else {})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The speech models of the catalogue (AssemblyAI has no model list)."""
        return [m.name for m in CATALOGUE]


CATALOGUE = tuple(
    ModelInfo(name=name, capabilities=("understanding.audio-understanding.speech-to-text",),
              delivery_modes=frozenset({"sync"}), context_window=1000)
    for name in ("universal", "best", "nano"))
"""AssemblyAI bills audio hours, which per-token prices cannot express: set
``models.<id>.pricing.per_request`` to your average."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``assemblyai.stt.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=AssemblyAIAdapter,
                         config_type=AssemblyAIConfig, env_vars=(ENV_KEY,),
                         default_base_url=DEFAULT_BASE_URL, catalogue=CATALOGUE,
                         auth="header:authorization",
                         description="AssemblyAI speech to text (upload and poll)")]


_ = Pricing  # prices are left at zero on purpose (see CATALOGUE)
