"""The OpenAI operations beyond chat: images, speech, transcription / translation,
moderation, and ``n > 1`` — the exact upstream requests, the parsed answers, broken answers,
and end to end through the library client with failover between two fakes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from modelmesh_core import ModelMesh
from modelmesh_core.errors import (
    AllProvidersExhaustedError,
    OperationNotSupportedError,
    ProviderError,
)
from modelmesh_core.fakes import CutStream, Fail, FakeUpstream, Reply, fake_audio
from modelmesh_core.operations import (
    ImageRequest,
    ModerationRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from modelmesh_core.types import Model, Timeouts
from modelmesh_openai import OpenAIAdapter

KEY = "sk-test-0123456789abcdef"  # the key the conftest fake accepts

FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)


def model(name: str, capability: str) -> Model:
    return Model(id=f"alpha.{name}", provider="alpha", upstream_id=name,
                 capabilities=(capability,))


DALLE3 = model("dall-e-3", "generation.image-generation.text-to-image")
GPT_IMAGE = model("gpt-image-1", "generation.image-generation.text-to-image")
TTS = model("tts-1", "generation.audio-generation.text-to-speech")
WHISPER = model("whisper-1", "understanding.audio-understanding.speech-to-text")
GPT4O_STT = model("gpt-4o-transcribe", "understanding.audio-understanding.speech-to-text")
MODERATION = model("omni-moderation-latest", "evaluation.content-moderation")
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8


# --------------------------------------------------------------------------- images


async def test_images_url_request_and_answer(make_adapter: Callable[..., OpenAIAdapter],
                                             fake: FakeUpstream) -> None:
    out = await make_adapter().images(
        DALLE3, ImageRequest(prompt="a red fox", n=1, size="1024x1024",
                             response_format="url", extra={"quality": "hd"}), FAST)
    call = fake.calls[0]
    assert call.path == "/v1/images/generations"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.body == {"model": "dall-e-3", "prompt": "a red fox", "size": "1024x1024",
                         "response_format": "url", "quality": "hd"}
    assert len(out.images) == 1
    assert out.images[0].url is not None and out.images[0].url.endswith("-0.png")
    assert out.images[0].b64_json is None
    assert out.images[0].revised_prompt == "A detailed rendering of: a red fox"
    assert out.usage == {"images": 1} and out.model == "alpha.dall-e-3"


async def test_gpt_image_b64_with_token_usage(make_adapter: Callable[..., OpenAIAdapter],
                                              fake: FakeUpstream) -> None:
    out = await make_adapter().images(GPT_IMAGE, ImageRequest(prompt="two cats", n=2), FAST)
    assert fake.calls[0].body == {"model": "gpt-image-1", "prompt": "two cats", "n": 2}
    assert len(out.images) == 2
    png = base64.b64decode(out.images[0].b64_json or "")
    assert png.startswith(b"\x89PNG")
    assert out.usage == {"prompt_tokens": 2, "completion_tokens": 544, "total_tokens": 546,
                         "images": 2}


async def test_images_answer_without_images_is_a_retryable_error(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    fake.script(Fail(500))
    with pytest.raises(ProviderError) as info:
        await make_adapter().images(DALLE3, ImageRequest(prompt="x"), FAST)
    assert info.value.retryable and info.value.status == 500


# --------------------------------------------------------------------------- speech


async def test_speech_request_and_streamed_audio(make_adapter: Callable[..., OpenAIAdapter],
                                                 fake: FakeUpstream) -> None:
    out = await make_adapter().speech(
        TTS, SpeechRequest(input="Hello there", voice="alloy", response_format="mp3",
                           speed=1.25), FAST)
    assert fake.calls[0].path == "/v1/audio/speech"
    assert fake.calls[0].body == {"model": "tts-1", "input": "Hello there", "voice": "alloy",
                                  "response_format": "mp3", "speed": 1.25}
    assert out.audio == fake_audio("Hello there", "alloy", "mp3")
    assert out.audio.startswith(b"ID3")
    assert out.content_type == "audio/mpeg"
    assert out.usage == {"characters": 11}


async def test_speech_cut_mid_audio_is_retryable_never_a_short_success(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    fake.script(CutStream())
    with pytest.raises(ProviderError) as info:
        await make_adapter().speech(TTS, SpeechRequest(input="Hello", voice="nova"), FAST)
    assert info.value.retryable


async def test_speech_rejected_request_is_a_caller_error(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    # the fake answers OpenAI's JSON 400 for an empty input: not retryable
    with pytest.raises(ProviderError) as info:
        await make_adapter().speech(TTS, SpeechRequest(input="", voice="alloy"), FAST)
    assert info.value.status == 400 and not info.value.retryable


async def test_speech_html_instead_of_audio_is_a_retryable_error(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    from modelmesh_core.fakes import WrongContentType

    fake.script(WrongContentType())
    with pytest.raises(ProviderError) as info:
        await make_adapter().speech(TTS, SpeechRequest(input="hi", voice="alloy"), FAST)
    assert info.value.retryable and "expected audio" in str(info.value)


# --------------------------------------------------------------------------- transcription


async def test_transcription_multipart_upload(make_adapter: Callable[..., OpenAIAdapter],
                                              fake: FakeUpstream) -> None:
    fake.script(Reply("the quick brown fox"))
    out = await make_adapter().transcribe(
        WHISPER, TranscriptionRequest(
            file=AUDIO, filename="fox.wav", content_type="audio/wav", language="en",
            prompt="animals", temperature=0.2,
            extra={"timestamp_granularities[]": ["word", "segment"]}), FAST)
    call = fake.calls[0]
    assert call.path == "/v1/audio/transcriptions"
    assert call.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert call.headers["authorization"] == f"Bearer {KEY}"
    upload = call.body.pop("file")
    assert upload == {"filename": "fox.wav", "content_type": "audio/wav",
                      "size": len(AUDIO), "data": AUDIO}
    assert call.body == {"model": "whisper-1", "language": "en", "prompt": "animals",
                         "response_format": "json", "temperature": "0.2",
                         "timestamp_granularities[]": ["word", "segment"]}
    assert out.text == "the quick brown fox"
    assert out.usage == {"seconds": 1}


async def test_translation_path_and_text_format(make_adapter: Callable[..., OpenAIAdapter],
                                                fake: FakeUpstream) -> None:
    fake.script(Reply("good morning"))
    out = await make_adapter().transcribe(
        WHISPER, TranscriptionRequest(file=AUDIO, filename="a.mp3", response_format="text",
                                      translate=True, language="fr"), FAST)
    assert fake.calls[0].path == "/v1/audio/translations"
    assert "language" not in fake.calls[0].body
    assert out.text == "good morning\n" and out.response_format == "text"


async def test_gpt4o_transcription_token_usage_and_verbose(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    fake.script(Reply("one two three"))
    out = await make_adapter().transcribe(
        GPT4O_STT, TranscriptionRequest(file=AUDIO, filename="a.wav"), FAST)
    audio_tokens = len(AUDIO) // 1000
    assert out.usage == {"prompt_tokens": audio_tokens, "completion_tokens": 3,
                         "total_tokens": audio_tokens + 3}
    fake.script(Reply("one two three"))
    verbose = await make_adapter().transcribe(
        WHISPER, TranscriptionRequest(file=AUDIO, response_format="verbose_json"), FAST)
    assert verbose.verbose is not None and verbose.verbose["segments"][0]["text"] == (
        "one two three")
    assert verbose.language == "english" and verbose.duration == pytest.approx(0.13, abs=0.01)


async def test_transcription_rejected_file_is_a_caller_error(
        make_adapter: Callable[..., OpenAIAdapter], fake: FakeUpstream) -> None:
    fake.script(Fail(400, message="Invalid file format. Supported formats: ['flac', 'mp3']"))
    with pytest.raises(ProviderError) as info:
        await make_adapter().transcribe(WHISPER, TranscriptionRequest(file=b"xx"), FAST)
    assert info.value.status == 400 and not info.value.retryable
    assert "Invalid file format" in str(info.value)


# --------------------------------------------------------------------------- moderation


async def test_moderation_request_and_results(make_adapter: Callable[..., OpenAIAdapter],
                                              fake: FakeUpstream) -> None:
    out = await make_adapter().moderate(
        MODERATION, ModerationRequest(input=["have a nice day", "I will kill them"]), FAST)
    assert fake.calls[0].path == "/v1/moderations"
    assert fake.calls[0].body == {"model": "omni-moderation-latest",
                                  "input": ["have a nice day", "I will kill them"]}
    assert [r.flagged for r in out.results] == [False, True]
    assert out.results[1].categories["violence"] is True
    assert out.results[1].category_scores["violence"] == pytest.approx(0.86)
    assert out.id.startswith("modr-") and out.upstream_model == "omni-moderation-latest"


# --------------------------------------------------------------------------- through the mesh


def two_fakes_config(a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    """Two OpenAI providers with the same operation models; pools try alpha first."""
    models: dict[str, Any] = {}
    for p in ("alpha", "beta"):
        for name in ("gpt-4o-mini", "text-embedding-3-small", "dall-e-3", "tts-1",
                     "whisper-1", "omni-moderation-latest"):
            models[f"{p}.{name}"] = {}
    retry = {"initial_delay": "1ms", "max_delay": "5ms", "same_model_retries": 0}
    return {
        "providers": {
            "alpha": {"connector": "openai.llm.v1",
                      "config": {"base_url": a.base_url, "api_key": KEY}},
            "beta": {"connector": "openai.llm.v1",
                     "config": {"base_url": b.base_url, "api_key": KEY}},
        },
        "models": models,
        "pools": {
            "chat": {"capability": "chat-completion", "retry": retry},
            "images": {"capability": "text-to-image", "retry": retry},
            "voice": {"capability": "text-to-speech", "retry": retry},
            "ears": {"capability": "speech-to-text", "retry": retry},
            "guard": {"capability": "content-moderation", "retry": retry},
            "vectors": {"capability": "text-embeddings", "retry": retry},
        },
    }


@pytest.fixture
async def two() -> Any:
    async with FakeUpstream(api_keys={KEY}) as a, FakeUpstream(api_keys={KEY}) as b:
        yield a, b


async def test_library_client_every_operation_with_failover(
        two: tuple[FakeUpstream, FakeUpstream], tmp_path: Any) -> None:
    from modelmesh_core.client import AsyncMeshClient

    a, b = two
    client = AsyncMeshClient(ModelMesh(two_fakes_config(a, b)))
    async with client:
        a.script(Fail(503), Fail(502), Fail(500), Fail(503))
        image = await client.images.generate(model="images", prompt="a lighthouse",
                                             response_format="b64_json")
        assert image.data[0].b64_json and image.data[0].revised_prompt
        speech = await client.audio.speech.create(model="voice", input="Hi!", voice="echo")
        assert speech.content == fake_audio("Hi!", "echo", "mp3")
        speech.write_to_file(tmp_path / "hi.mp3")
        assert (tmp_path / "hi.mp3").read_bytes() == speech.content
        b.script(Reply("bonjour"))
        text = await client.audio.transcriptions.create(
            model="ears", file=("hello.wav", AUDIO, "audio/wav"), response_format="text")
        assert text == "bonjour\n"
        verdict = await client.moderations.create(model="guard", input="kill it")
        assert verdict.results[0].flagged is True
        # each of the four requests failed once on alpha, then beta answered
        assert [c.path for c in a.calls] == ["/v1/images/generations", "/v1/audio/speech",
                                              "/v1/audio/transcriptions", "/v1/moderations"]
        assert [c.path for c in b.calls] == [c.path for c in a.calls]
        assert client.usage["requests"] == 4


async def test_wrong_operation_for_a_pool_names_what_it_serves(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    from modelmesh_core.client import AsyncMeshClient

    a, b = two
    async with AsyncMeshClient(ModelMesh(two_fakes_config(a, b))) as client:
        with pytest.raises(OperationNotSupportedError) as info:
            await client.embeddings.create(model="chat", input="hello")
        assert info.value.serves == ("chat",) and info.value.pool == "chat"
        assert "representation.embeddings" in str(info.value)
        with pytest.raises(OperationNotSupportedError) as info:
            await client.chat.completions.create(
                model="text-embeddings", messages=[{"role": "user", "content": "hi"}])
        assert info.value.serves == ("embed",)
        with pytest.raises(OperationNotSupportedError):
            await client.images.generate(model="alpha.tts-1", prompt="x")
        assert not a.calls and not b.calls  # nothing went upstream


async def test_n_passed_through_to_openai_and_fanned_out_elsewhere(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    from modelmesh_core.client import AsyncMeshClient

    a, b = two
    config = two_fakes_config(a, b)
    # beta's gpt-4o-mini does not take n (as Groq's models do not): asked 3 times
    config["models"]["beta.gpt-4o-mini"] = {"features": ["tool_calling"]}
    config["models"]["beta.gpt-4o-mini"]["pricing"] = {"input": 1.0, "output": 1.0,
                                                       "per_request": 0.01}
    async with AsyncMeshClient(ModelMesh(config)) as client:
        msg = [{"role": "user", "content": "say hi"}]
        out = await client.chat.completions.create(model="alpha.gpt-4o-mini", messages=msg,
                                                   n=3)
        assert a.calls[-1].body["n"] == 3 and len(a.calls) == 1
        assert [c.index for c in out.choices] == [0, 1, 2]
        assert out.usage.completion_tokens == 3 * 5
        fanned = await client.chat.completions.create(model="beta.gpt-4o-mini", messages=msg,
                                                      n=3)
        assert len(b.calls) == 3 and all("n" not in c.body for c in b.calls)
        assert [c.index for c in fanned.choices] == [0, 1, 2]
        assert all(c.message.content == "Hello from the fake upstream!" for c in
                   fanned.choices)
        assert fanned.usage.prompt_tokens == 3 * 2 and fanned.usage.completion_tokens == 15
        # usage summed, and the per-request price paid three times (alpha's passed-through
        # call is billed at gpt-4o-mini's catalogue prices)
        alpha_cost = (2 * 0.15 + 15 * 0.6) / 1_000_000
        assert client.usage["cost"] == pytest.approx(
            alpha_cost + (6 + 15) / 1_000_000 + 3 * 0.01)


async def test_fan_out_fails_the_attempt_when_one_call_fails(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    from modelmesh_core.client import AsyncMeshClient

    a, b = two
    config = two_fakes_config(a, b)
    config["models"]["alpha.gpt-4o-mini"] = {"features": []}
    config["models"]["beta.gpt-4o-mini"] = {"features": []}
    a.default = Fail(500)
    async with AsyncMeshClient(ModelMesh(config)) as client:
        out = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], n=2)
        assert len(out.choices) == 2 and len(b.calls) == 2
        b.default = Fail(500)
        with pytest.raises(AllProvidersExhaustedError):
            await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}], n=2)
