"""The exact upstream request the adapter sends for representative calls."""

from __future__ import annotations

import pytest
from gemini_testlib import EMBED, FAST, FLASH, KEY, collect, req

from modelmesh_core.errors import ProviderError
from modelmesh_core.types import EmbeddingRequest, ProviderAdapter
from modelmesh_gemini.fake import DOC_FUNCTION_CALL, Canned, Reply

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


async def test_adapter_satisfies_protocol(adapter) -> None:
    assert isinstance(adapter, ProviderAdapter)
    assert KEY not in repr(adapter)
    await adapter.close()


async def test_system_prompt_and_generation_config(adapter, fake) -> None:
    request = req(
        {"role": "system", "content": "You are a cat. Your name is Neko."},
        {"role": "user", "content": "Good morning! How are you?"},
        temperature=0.4,
        max_tokens=256,
        extra={"top_p": 0.9, "stop": ["\n\n", "END"], "seed": 7, "user": "u-1"},
    )
    await adapter.complete(FLASH, request, FAST)

    call = fake.calls[-1]
    assert call.method == "POST"
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.query == {}
    assert call.headers["x-goog-api-key"] == KEY
    assert call.headers["content-type"] == "application/json"
    assert "authorization" not in call.headers
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "Good morning! How are you?"}]}],
        "systemInstruction": {"parts": [{"text": "You are a cat. Your name is Neko."}]},
        "generationConfig": {
            "temperature": 0.4,
            "maxOutputTokens": 256,
            "topP": 0.9,
            "stopSequences": ["\n\n", "END"],
            "seed": 7,
        },
    }


async def test_multi_turn_roles_and_max_completion_tokens(adapter, fake) -> None:
    request = req(
        {"role": "user", "content": "Write the first line of a story about a magic backpack."},
        {"role": "assistant", "content": "In the bustling city of Meadow brook, lived Sophie."},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Can you set it in a quiet village in 1600s France?"},
        max_tokens=10,
        extra={"max_completion_tokens": 99, "stop": "Title"},
    )
    await adapter.complete(FLASH, request, FAST)
    body = fake.calls[-1].body
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Write the first line of a story about a magic "
                                            "backpack."}]},
        {"role": "model", "parts": [{"text": "In the bustling city of Meadow brook, lived "
                                             "Sophie."}]},
        {"role": "user", "parts": [{"text": "Can you set it in a quiet village in 1600s "
                                            "France?"}]},
    ]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["generationConfig"] == {"maxOutputTokens": 99, "stopSequences": ["Title"]}


async def test_image_parts_become_inline_data_and_file_data(adapter, fake) -> None:
    request = req(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this picture?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/scones.jpg"}},
            ],
        }
    )
    await adapter.complete(FLASH, request, FAST)
    assert fake.calls[-1].body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What is this picture?"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/scones.jpg"}},
            ],
        }
    ]


async def test_tools_and_tool_choice_become_function_declarations(adapter, fake) -> None:
    request = req(
        {"role": "user", "content": "Weather in Paris?"},
        tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}],
        extra={"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
               "parallel_tool_calls": False},
    )
    await adapter.complete(FLASH, request, FAST)
    body = fake.calls[-1].body
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "City name"},
                            "unit": {"type": "string", "nullable": True, "enum": ["c", "f"]},
                        },
                        "required": ["city"],
                    },
                },
                {"name": "now"},
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


@pytest.mark.parametrize(
    ("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")]
)
async def test_tool_choice_modes(adapter, fake, choice, mode) -> None:
    await adapter.complete(FLASH, req(tools=[WEATHER_TOOL], extra={"tool_choice": choice}), FAST)
    assert fake.calls[-1].body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


async def test_tool_round_trip_messages_become_function_call_and_response(adapter, fake) -> None:
    fake.script(Canned(body=DOC_FUNCTION_CALL))
    first = await adapter.complete(FLASH, req({"role": "user", "content": "Barbie?"}), FAST)
    (call,) = first.tool_calls
    assert call.id.startswith("call_mmg_")
    request = req(
        {"role": "user", "content": "Which theaters in Mountain View show Barbie movie?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}},
            {"id": "gemini-call-7", "type": "function",
             "function": {"name": "get_showtimes", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": call.id,
         "content": '{"movie": "Barbie", "theaters": [{"name": "AMC Mountain View 16"}]}'},
        {"role": "tool", "tool_call_id": "gemini-call-7", "content": "none today"},
        {"role": "user", "content": "Thanks"},
    )
    await adapter.complete(FLASH, request, FAST)
    assert fake.calls[-1].body["contents"] == [
        {"role": "user", "parts": [{"text": "Which theaters in Mountain View show Barbie movie?"}]},
        {"role": "model", "parts": [
            # a made-up id stays here; Gemini's own ids go back upstream
            {"functionCall": {"name": "find_theaters",
                              "args": {"movie": "Barbie", "location": "Mountain View, CA"}}},
            {"functionCall": {"name": "get_showtimes", "args": {}, "id": "gemini-call-7"}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "find_theaters", "response": {
                "movie": "Barbie", "theaters": [{"name": "AMC Mountain View 16"}]}}},
            {"functionResponse": {"name": "get_showtimes", "id": "gemini-call-7",
                                  "response": {"output": "none today"}}},
        ]},
        {"role": "user", "parts": [{"text": "Thanks"}]},
    ]


async def test_json_schema_response_format(adapter, fake) -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "recipes": {"type": "array", "items": {"$ref": "#/$defs/recipe"}},
            "kind": {"const": "cookies"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["recipes"],
        "additionalProperties": False,
        "$defs": {
            "recipe": {
                "type": "object",
                "properties": {"recipe_name": {"type": "string"}},
                "additionalProperties": False,
            }
        },
    }
    request = req(extra={"response_format": {
        "type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}})
    await adapter.complete(FLASH, request, FAST)
    assert fake.calls[-1].body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "object",
            "properties": {
                "recipes": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"recipe_name": {"type": "string"}}},
                },
                "kind": {"type": "string", "enum": ["cookies"]},
                "note": {"type": "string", "nullable": True},
            },
            "required": ["recipes"],
        },
    }


async def test_json_object_mode_and_reasoning_effort(adapter, fake) -> None:
    request = req(extra={"response_format": {"type": "json_object"}, "reasoning_effort": "low"})
    await adapter.complete(FLASH, request, FAST)
    assert fake.calls[-1].body["generationConfig"] == {
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 1024},
    }


async def test_safety_settings_from_config_and_native_overrides(make_adapter, fake) -> None:
    adapter = make_adapter(safety_settings={"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"})
    await adapter.complete(FLASH, req(), FAST)
    assert fake.calls[-1].body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
    ]
    native = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
    await adapter.complete(FLASH, req(extra={
        "safetySettings": native, "cachedContent": "cachedContents/abc",
        "generationConfig": {"topK": 3}, "temperature": 0.1}), FAST)
    body = fake.calls[-1].body
    assert body["safetySettings"] == native
    assert body["cachedContent"] == "cachedContents/abc"
    assert body["generationConfig"] == {"topK": 3}


async def test_extra_headers_are_sent(make_adapter, fake) -> None:
    adapter = make_adapter(headers={"x-goog-user-project": "proj-1"})
    await adapter.complete(FLASH, req(), FAST)
    assert fake.calls[-1].headers["x-goog-user-project"] == "proj-1"


async def test_stream_request_uses_alt_sse_and_header_key(adapter, fake) -> None:
    fake.script(Reply("one two"))
    await collect(adapter, req({"role": "system", "content": "Be terse."},
                               {"role": "user", "content": "hi"}))
    call = fake.calls[-1]
    assert call.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert call.query == {"alt": "sse"}
    assert call.headers["x-goog-api-key"] == KEY
    assert call.headers["accept"] == "text/event-stream"
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
    }


async def test_trailing_assistant_message_is_a_trailing_model_turn(adapter, fake) -> None:
    request = req({"role": "user", "content": "Count to five."},
                  {"role": "assistant", "content": "1, 2, 3"})
    await adapter.complete(FLASH, request, FAST)
    assert fake.calls[-1].body["contents"][-1] == {"role": "model", "parts": [{"text": "1, 2, 3"}]}


async def test_embed_one_string_uses_embed_content(adapter, fake) -> None:
    await adapter.embed(EMBED, EmbeddingRequest(input="Hello world", extra={
        "dimensions": 8, "task_type": "RETRIEVAL_QUERY"}), FAST)
    call = fake.calls[-1]
    assert call.path == "/v1beta/models/gemini-embedding-001:embedContent"
    assert call.headers["x-goog-api-key"] == KEY
    assert call.body == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "Hello world"}]},
        "outputDimensionality": 8,
        "taskType": "RETRIEVAL_QUERY",
    }


async def test_embed_list_uses_batch_embed_contents(adapter, fake) -> None:
    await adapter.embed(EMBED, EmbeddingRequest(input=["a", "b"]), FAST)
    call = fake.calls[-1]
    assert call.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert call.body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}},
    ]}


async def test_list_models_sends_key_in_header_and_pages(adapter, fake) -> None:
    names = await adapter.list_models(FAST)
    assert names[:2] == ["gemini-2.5-pro", "gemini-2.5-flash"]
    call = fake.calls[-1]
    assert call.method == "GET"
    assert call.path == "/v1beta/models"
    assert call.query == {"pageSize": "1000"}
    assert call.headers["x-goog-api-key"] == KEY


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([{"role": "tool", "tool_call_id": "x", "content": "1"}], "matches no earlier"),
        ([{"role": "wizard", "content": "hi"}], "unknown role"),
        ([{"role": "system", "content": "only a system prompt"}], "at least one user message"),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}], "video_url"),
        ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {
            "name": "f", "arguments": "{not json"}}]}], "not valid JSON"),
    ],
)
async def test_requests_gemini_cannot_express_are_the_callers_400(
    adapter, fake, messages, needle
) -> None:
    with pytest.raises(ProviderError) as info:
        await adapter.complete(FLASH, req(*messages), FAST)
    assert info.value.status == 400
    assert info.value.retryable is False
    assert needle in str(info.value)
    assert fake.calls == []  # nothing was sent
