"""A local fake of AssemblyAI's async transcription API: ``POST /v2/upload`` (raw bytes →
``upload_url``), ``POST /v2/transcript`` (→ ``queued``), ``GET /v2/transcript/{id}``
(``processing`` for ``polls_before_done`` reads, then ``completed`` with ``text``), and
``GET /v2/transcript/{id}/srt|vtt``. Key in ``authorization``; errors ``{"error"}``.

``transcript`` is the text every transcript gets; ``fail_with`` makes the next transcript end
in ``status: error`` with that message.
"""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from modelmesh_core.vendor_fake import VendorFake

__all__ = ["FakeAssemblyAI"]


class FakeAssemblyAI(VendorFake):
    """AssemblyAI's upload / transcript API."""

    vendor = "AssemblyAI"

    def __init__(self, *, api_keys: set[str] | None = None,
                 transcript: str = "Hello from the fake AssemblyAI.",
                 polls_before_done: int = 2) -> None:
        super().__init__(api_keys=api_keys)
        self.transcript = transcript
        self.polls_before_done = polls_before_done
        self.fail_with: str | None = None
        self.uploads: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/upload", self._upload)
        app.router.add_post("/v2/transcript", self._create)
        app.router.add_get("/v2/transcript/{id}", self._get)
        app.router.add_get("/v2/transcript/{id}/{fmt}", self._subtitles)

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("authorization")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        if not isinstance(body, bytes) or not body:
            return self.error(400, "Upload body is empty")
        url = f"https://cdn.assemblyai.com/upload/fake-{next(self._ids):06d}"
        self.uploads[url] = body
        return self.json({"upload_url": url})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        url = body.get("audio_url") if isinstance(body, dict) else None
        if url not in self.uploads:
            return self.error(400, "Transcoding failed. Cannot access uploaded file.")
        tid = f"fake-transcript-{next(self._ids):06d}"
        job = {"id": tid, "status": "queued", "audio_url": url, "text": None,
               "language_code": body.get("language_code"),
               "speech_model": body.get("speech_model"), "audio_duration": None,
               "error": None, "_polls": 0, "_fail": self.fail_with}
        self.fail_with = None
        self.jobs[tid] = job
        return self.json({k: v for k, v in job.items() if not k.startswith("_")})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        _, early = await self.accept(request)
        if early is not None:
            return early
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, "Transcript not found")
        job["_polls"] += 1
        if job["_polls"] <= self.polls_before_done:
            job["status"] = "processing"
        elif job["_fail"]:
            job["status"], job["error"] = "error", job["_fail"]
        else:
            size = len(self.uploads[job["audio_url"]])
            job.update(status="completed", text=self.transcript,
                       audio_duration=max(size // 16000, 1),
                       language_code=job["language_code"] or "en_us",
                       words=[{"text": w, "start": i * 300, "end": i * 300 + 250,
                               "confidence": 0.98}
                              for i, w in enumerate(self.transcript.split())])
        return self.json({k: v for k, v in job.items() if not k.startswith("_")})

    async def _subtitles(self, request: web.Request) -> web.StreamResponse:
        _, early = await self.accept(request)
        if early is not None:
            return early
        job = self.jobs.get(request.match_info["id"])
        fmt = request.match_info["fmt"]
        if job is None or job["status"] != "completed" or fmt not in ("srt", "vtt"):
            return self.error(400, "Transcript is not completed")
        stamp = "00:00:00,000 --> 00:00:01,000" if fmt == "srt" else (
            "00:00:00.000 --> 00:00:01.000")
        doc = (f"1\n{stamp}\n{job['text']}\n\n" if fmt == "srt"
               else f"WEBVTT\n\n{stamp}\n{job['text']}\n\n")
        return web.Response(text=doc, content_type="text/plain")
