"""assemblyai.stt.v1: upload, create, poll; subtitles; errors; failover from OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from modelmesh_assemblyai import AssemblyAIAdapter, AssemblyAIConfig
from modelmesh_assemblyai.fake import FakeAssemblyAI

from modelmesh_core import ModelMesh
from modelmesh_core.errors import ProviderError, ProviderTimeoutError
from modelmesh_core.fakes import Fail, FakeUpstream
from modelmesh_core.operations import TranscriptionRequest
from modelmesh_core.types import Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "aai-test-0123456789abcdef"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
STT = Model(id="aai.universal", provider="aai", upstream_id="universal",
            capabilities=("understanding.audio-understanding.speech-to-text",))
AUDIO = b"ID3" + bytes(range(256)) * 200


@pytest.fixture
async def fake() -> AsyncIterator[FakeAssemblyAI]:
    async with FakeAssemblyAI.running(api_keys={KEY}) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeAssemblyAI) -> AsyncIterator[AssemblyAIAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="aai", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield AssemblyAIAdapter(context, AssemblyAIConfig(api_key=KEY, base_url=fake.url,
                                                          poll_interval=0.01))


async def test_upload_create_and_poll(adapter: AssemblyAIAdapter,
                                      fake: FakeAssemblyAI) -> None:
    out = await adapter.transcribe(STT, TranscriptionRequest(file=AUDIO, language="en"), FAST)
    paths = [(c.method, c.path) for c in fake.calls]
    tid = next(iter(fake.jobs))
    assert paths == [("POST", "/v2/upload"), ("POST", "/v2/transcript"),
                     ("GET", f"/v2/transcript/{tid}"), ("GET", f"/v2/transcript/{tid}"),
                     ("GET", f"/v2/transcript/{tid}")]
    upload, create = fake.calls[0], fake.calls[1]
    assert upload.body == AUDIO and upload.headers["authorization"] == KEY
    assert upload.headers["content-type"] == "application/octet-stream"
    assert create.body == {"audio_url": next(iter(fake.uploads)), "speech_model": "universal",
                           "language_code": "en"}
    assert out.text == "Hello from the fake AssemblyAI." and out.usage == {"seconds": 3}


async def test_srt_from_the_subtitles_endpoint(adapter: AssemblyAIAdapter,
                                               fake: FakeAssemblyAI) -> None:
    out = await adapter.transcribe(STT, TranscriptionRequest(file=AUDIO,
                                                             response_format="srt"), FAST)
    assert fake.calls[-1].path.endswith("/srt")
    assert out.text.startswith("1\n00:00:00,000 --> ")


async def test_transcript_error_is_a_caller_error(adapter: AssemblyAIAdapter,
                                                  fake: FakeAssemblyAI) -> None:
    fake.fail_with = "File does not appear to contain audio."
    with pytest.raises(ProviderError) as info:
        await adapter.transcribe(STT, TranscriptionRequest(file=AUDIO), FAST)
    assert info.value.status == 400 and "contain audio" in str(info.value)


async def test_polling_is_bounded_by_the_total_timeout(fake: FakeAssemblyAI) -> None:
    fake.polls_before_done = 10_000
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="aai", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        slow = AssemblyAIAdapter(context, AssemblyAIConfig(api_key=KEY, base_url=fake.url,
                                                           poll_interval=0.05))
        with pytest.raises(ProviderTimeoutError) as info:
            await slow.transcribe(STT, TranscriptionRequest(file=AUDIO),
                                  Timeouts(connect=1, first_byte=1, idle=1, total=0.3))
    assert info.value.phase == "total"


async def test_upload_failure_and_translation(adapter: AssemblyAIAdapter,
                                              fake: FakeAssemblyAI) -> None:
    fake.script(Fault(status=503))
    with pytest.raises(ProviderError) as info:
        await adapter.transcribe(STT, TranscriptionRequest(file=AUDIO), FAST)
    assert info.value.retryable and not fake.jobs
    with pytest.raises(ProviderError) as translate:
        await adapter.transcribe(STT, TranscriptionRequest(file=AUDIO, translate=True), FAST)
    assert translate.value.status == 404


async def test_transcription_fails_over_from_openai(fake: FakeAssemblyAI) -> None:
    async with FakeUpstream() as openai_fake:
        mesh = ModelMesh({
            "providers": {
                "oa": {"connector": "openai.llm.v1",
                       "config": {"api_key": "sk-x-0123456789", "base_url": openai_fake.base_url}},
                "aai": {"connector": "assemblyai.stt.v1",
                        "config": {"api_key": KEY, "base_url": fake.url,
                                   "poll_interval": 0.01}},
            },
            "models": {"oa.whisper-1": {}, "aai.universal": {}},
            "pools": {"ears": {"capability": "speech-to-text",
                               "models": ["oa.whisper-1", "aai.universal"],
                               "retry": {"initial_delay": "1ms", "same_model_retries": 0}}},
        })
        await mesh.initialize()
        try:
            openai_fake.script(Fail(500))
            out = await mesh.router.transcribe("ears", TranscriptionRequest(file=AUDIO))
            assert out.model == "aai.universal" and out.metadata["attempts"] == 2
            assert openai_fake.calls[0].path == "/v1/audio/transcriptions"
        finally:
            await mesh.shutdown()
