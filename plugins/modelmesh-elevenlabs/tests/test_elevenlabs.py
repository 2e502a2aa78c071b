"""elevenlabs.tts.v1: exact request (voice in the path, output_format in the query), the
audio, errors in ElevenLabs' shapes, and failover from OpenAI speech."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from modelmesh_elevenlabs import ElevenLabsAdapter, ElevenLabsConfig
from modelmesh_elevenlabs.fake import FakeElevenLabs

from modelmesh_core.errors import AuthenticationError, ProviderError
from modelmesh_core.fakes import fake_audio
from modelmesh_core.operations import SpeechRequest
from modelmesh_core.types import Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "el-test-0123456789abcdef"
VOICE = "21m00Tcm4TlvDq8ikWAM"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
TTS = Model(id="el.eleven_multilingual_v2", provider="el", upstream_id="eleven_multilingual_v2",
            capabilities=("generation.audio-generation.text-to-speech",))


@pytest.fixture
async def fake() -> AsyncIterator[FakeElevenLabs]:
    async with FakeElevenLabs.running(api_keys={KEY}) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeElevenLabs) -> AsyncIterator[ElevenLabsAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="el", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield ElevenLabsAdapter(context, ElevenLabsConfig(
            api_key=KEY, base_url=fake.url, voices={"alloy": VOICE},
            voice_settings={"stability": 0.5}))


async def test_speech_request_and_audio(adapter: ElevenLabsAdapter,
                                        fake: FakeElevenLabs) -> None:
    out = await adapter.speech(TTS, SpeechRequest(input="Hello world", voice="alloy",
                                                  speed=1.1), FAST)
    call = fake.calls[0]
    assert call.path == f"/v1/text-to-speech/{VOICE}"
    assert call.query == {"output_format": "mp3_44100_128"}
    assert call.headers["xi-api-key"] == KEY and "authorization" not in call.headers
    assert call.body == {"text": "Hello world", "model_id": "eleven_multilingual_v2",
                         "voice_settings": {"stability": 0.5, "speed": 1.1}}
    assert out.audio == fake_audio("Hello world", VOICE, "mp3")
    assert out.content_type == "audio/mpeg" and out.usage == {"characters": 11}


async def test_unknown_voice_and_validation_errors(adapter: ElevenLabsAdapter) -> None:
    with pytest.raises(ProviderError) as info:
        await adapter.speech(TTS, SpeechRequest(input="x", voice="nobody"), FAST)
    assert info.value.status == 404 and "voice_not_found" in str(info.value)


async def test_format_without_equivalent_moves_on(adapter: ElevenLabsAdapter,
                                                  fake: FakeElevenLabs) -> None:
    with pytest.raises(ProviderError) as info:
        await adapter.speech(TTS, SpeechRequest(input="x", voice=VOICE,
                                                response_format="flac"), FAST)
    assert info.value.status == 404 and not fake.calls


async def test_cut_audio_and_auth(adapter: ElevenLabsAdapter, fake: FakeElevenLabs) -> None:
    fake.script(Fault(cut=True))
    with pytest.raises(ProviderError) as info:
        await adapter.speech(TTS, SpeechRequest(input="x", voice=VOICE), FAST)
    assert info.value.retryable
    fake.script(Fault(status=401, message="Invalid API key"))
    with pytest.raises(AuthenticationError) as auth:
        await adapter.speech(TTS, SpeechRequest(input="x", voice=VOICE), FAST)
    assert "invalid_api_key" in str(auth.value)
