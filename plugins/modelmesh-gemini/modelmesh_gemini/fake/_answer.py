"""How the fake checks requests and builds answers (deterministic, from a ``Reply``)."""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from modelmesh_core.fakes import Reply

_WORD = re.compile(r"\s*\S+")
_REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
    }
)
_GENERATION_FIELDS = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "mediaResolution",
    }
)
_PART_FIELDS = frozenset(
    {
        "text",
        "inlineData",
        "functionCall",
        "functionResponse",
        "fileData",
        "executableCode",
        "codeExecutionResult",
        "thought",
        "thoughtSignature",
        "videoMetadata",
    }
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _unknown(obj: Mapping[str, Any], known: frozenset[str]) -> str | None:
    for key in obj:
        if _camel(key) not in known:
            return key
    return None


def get(obj: Mapping[str, Any], name: str) -> Any:
    """A field by its JSON (lowerCamel) or proto (snake_case) name, as Google accepts both."""
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name))


def check_generate(body: Any) -> str | None:
    """What the real API would say about a malformed ``GenerateContentRequest``, else None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    bad = _unknown(body, _REQUEST_FIELDS)
    if bad is not None:
        return f'Invalid JSON payload received. Unknown name "{bad}": Cannot find field.'
    generation = get(body, "generationConfig")
    if isinstance(generation, dict):
        bad = _unknown(generation, _GENERATION_FIELDS)
        if bad is not None:
            return (
                f'Invalid JSON payload received. Unknown name "{bad}" at '
                "'generation_config': Cannot find field."
            )
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    if not isinstance(contents, list):
        contents = [contents]
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not content.get("parts"):
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be "
                "empty.\n"
            )
        if content.get("role") not in (None, "user", "model"):
            return "Please use a valid role: user, model."
        parts = content["parts"]
        for part in parts if isinstance(parts, list) else [parts]:
            bad = _unknown(part, _PART_FIELDS) if isinstance(part, dict) else "part"
            if bad is not None:
                return (
                    f'Invalid JSON payload received. Unknown name "{bad}" at '
                    f"'contents[{i}].parts[0]': Cannot find field."
                )
    return None


def _words(text: str) -> int:
    return len(text.split())


def texts(value: Any) -> Iterator[str]:
    """Every ``text`` inside a request's contents / system instruction."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def unit_vector(text: str, dim: int) -> list[float]:
    """A deterministic unit vector of ``dim`` values derived from ``text``."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(text.encode() + counter.to_bytes(4, "little")).digest()
        counter += 1
    values = [(v / 2147483647.5) - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# --------------------------------------------------------------------------- the answer builder


class Answer:
    """One candidate built from a ``Reply`` (whole or as stream events), deterministically."""

    def __init__(self, body: dict[str, Any], reply: Reply, model: str, n: int) -> None:
        self.reply = reply
        self.model = reply.model or model
        self.response_id = f"fake{n:012d}"
        self.calls = []
        for call in reply.tool_calls or ():
            args = call.get("arguments") or "{}"
            fc: dict[str, Any] = {
                "name": call["name"],
                "args": orjson.loads(args) if isinstance(args, str) else dict(args),
            }
            if call.get("id"):
                fc["id"] = call["id"]
            self.calls.append({"functionCall": fc})
        self.finish = reply.finish_reason or "STOP"
        prompt = max(sum(_words(t) for t in texts(body.get("contents"))), 1) + sum(
            _words(t) for t in texts(get(body, "systemInstruction"))
        )
        out = _words(reply.content) + sum(
            len(orjson.dumps(c["functionCall"]["args"])) // 4 for c in self.calls
        )
        over = dict(reply.usage or {})
        self.prompt = over.get("promptTokenCount", prompt)
        self.candidates = over.get("candidatesTokenCount", max(out, 1))
        self.thoughts = over.get("thoughtsTokenCount", 0)
        self.cached = over.get("cachedContentTokenCount", 0)
        self.tool_prompt = over.get("toolUsePromptTokenCount", 0)

    def usage(self, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": self.prompt}
        total = self.prompt + self.tool_prompt
        if final:
            usage["candidatesTokenCount"] = self.candidates
            total += self.candidates + self.thoughts
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        if self.tool_prompt:
            usage["toolUsePromptTokenCount"] = self.tool_prompt
        if final and self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        usage["totalTokenCount"] = total
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt}]
        return usage

    def _response(
        self, parts: list[dict[str, Any]], finish: str | None, final: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(final),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.reply.content or not self.calls:
            parts.append({"text": self.reply.content})
        parts.extend(self.calls)
        return self._response(parts, self.finish, True)

    def events(self, finish: bool = True) -> list[dict[str, Any]]:
        pieces: list[list[dict[str, Any]]] = [
            [{"text": p}] for p in _WORD.findall(self.reply.content)
        ]
        if self.calls:
            pieces.append(list(self.calls))
        if not pieces:
            pieces.append([{"text": ""}])
        last = len(pieces) - 1
        return [
            self._response(parts, self.finish if finish and i == last else None, i == last)
            for i, parts in enumerate(pieces)
        ]

    def stopped(self, reason: str) -> dict[str, Any]:
        """The event of a candidate a filter stopped: no content, only the reason."""
        return {
            "candidates": [
                {
                    "content": {"parts": [], "role": "model"},
                    "finishReason": reason,
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                         "blocked": True}
                    ],
                }
            ],
            "usageMetadata": self.usage(True),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }


