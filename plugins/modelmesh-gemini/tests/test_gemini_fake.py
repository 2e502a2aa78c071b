"""FakeGemini itself, spoken to with a plain HTTP client: it must behave like the real API so
that tests built on it mean something."""

from __future__ import annotations

from typing import Any

import pytest
from gemini_testlib import KEY

from modelmesh_gemini.fake import DOC_STREAM_EVENTS, Canned, FakeGemini, GeminiError, Reply

GENERATE = "/models/gemini-2.5-flash:generateContent"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


async def post(session, fake: FakeGemini, path: str, body: Any, **headers: str) -> tuple[int, Any]:
    headers.setdefault("x-goog-api-key", KEY)
    async with session.post(fake.base_url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_answer_shape(session, fake) -> None:
    status, body = await post(session, fake, GENERATE, HELLO)
    assert status == 200
    candidate = body["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": "Hello from the fake upstream!"}],
                                    "role": "model"}
    assert candidate["finishReason"] == "STOP"
    assert body["usageMetadata"]["totalTokenCount"] == (
        body["usageMetadata"]["promptTokenCount"] + body["usageMetadata"]["candidatesTokenCount"])
    assert body["modelVersion"] == "gemini-2.5-flash"
    assert fake.calls[-1].model == "gemini-2.5-flash"
    assert fake.calls[-1].method_name == "generateContent"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]},
         'Unknown name "messages": Cannot find field.'),
        ({**HELLO, "generationConfig": {"max_tokens": 5}},
         "Unknown name \"max_tokens\" at 'generation_config'"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
         "Please use a valid role: user, model."),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"content": "hi"}]}]}, 'Unknown name "content"'),
    ],
)
async def test_malformed_requests_are_rejected_like_the_real_api(
    session, fake, body, message
) -> None:
    status, answer = await post(session, fake, GENERATE, body)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert message in answer["error"]["message"]


async def test_snake_case_fields_are_accepted_as_google_does(session, fake) -> None:
    body = {**HELLO, "generation_config": {"max_output_tokens": 5},
            "system_instruction": {"parts": [{"text": "be brief"}]}}
    status, _ = await post(session, fake, GENERATE, body)
    assert status == 200


async def test_authentication_like_google(session, fake) -> None:
    status, answer = await post(session, fake, GENERATE, HELLO, **{"x-goog-api-key": "nope"})
    assert status == 400
    assert answer["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    async with session.post(fake.base_url + GENERATE, json=HELLO) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["status"] == "PERMISSION_DENIED"
    async with session.post(fake.base_url + GENERATE + f"?key={KEY}", json=HELLO) as resp:
        assert resp.status == 200  # the query parameter works too (the adapter never uses it)
    assert fake.calls[-1].api_key == KEY


async def test_unknown_model_and_path(session, fake) -> None:
    status, answer = await post(session, fake, "/models/gemini-9:generateContent", HELLO)
    assert status == 404
    assert answer["error"]["message"].startswith("models/gemini-9 is not found")
    status, answer = await post(session, fake, "/nothing/here", HELLO)
    assert status == 404 and answer["error"]["status"] == "NOT_FOUND"


async def test_error_body_details(session, fake) -> None:
    fake.script(GeminiError.quota(retry_delay=52))
    status, answer = await post(session, fake, GENERATE, HELLO)
    assert status == 429
    error = answer["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    kinds = [d["@type"].rsplit(".", 1)[-1] for d in error["details"]]
    assert kinds == ["QuotaFailure", "Help", "RetryInfo"]
    assert error["details"][2]["retryDelay"] == "52s"


async def test_sse_framing_has_no_terminator(session, fake) -> None:
    fake.script(Reply("one two"))
    url = fake.base_url + "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    async with session.post(url, json=HELLO, headers={"x-goog-api-key": KEY}) as resp:
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()
    events = raw.split(b"\r\n\r\n")
    assert events[-1] == b""
    assert all(e.startswith(b"data: {") for e in events[:-1])
    assert len(events) - 1 == 2
    assert b"[DONE]" not in raw
    assert b'"finishReason":"STOP"' in events[1] and b"finishReason" not in events[0]


async def test_canned_stream_events_verbatim(session, fake) -> None:
    import orjson

    fake.script(Canned(events=DOC_STREAM_EVENTS))
    url = fake.base_url + "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    async with session.post(url, json=HELLO, headers={"x-goog-api-key": KEY}) as resp:
        raw = await resp.read()
    sent = [orjson.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e]
    assert sent == list(DOC_STREAM_EVENTS)


async def test_batch_embed_requires_matching_model(session, fake) -> None:
    body = {"requests": [{"model": "models/other", "content": {"parts": [{"text": "x"}]}}]}
    status, answer = await post(session, fake, "/models/gemini-embedding-001:batchEmbedContents",
                                body)
    assert status == 400
    assert "must match" in answer["error"]["message"]
