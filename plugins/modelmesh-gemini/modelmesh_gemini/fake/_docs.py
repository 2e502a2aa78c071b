"""Answers printed in Google's Gemini API documentation, for :class:`Canned`."""

from __future__ import annotations

from typing import Any

# Answers printed in Google's Gemini API documentation (REST quickstart notebooks of
# google/generative-ai-docs and google-gemini/cookbook); long texts and vectors are cut
# where the documentation itself cut them.

_NEGLIGIBLE = [
    {"category": c, "probability": "NEGLIGIBLE"}
    for c in (
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    )
]

DOC_GENERATE_CONTENT: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "text": "OK. I found two theaters in Mountain View that are showing the "
                        "Barbie movie: AMC Mountain View 16 and Regal Edwards 14."
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": _NEGLIGIBLE,
        }
    ]
}
"""``generateContent`` answering a function result (function-calling REST quickstart)."""

DOC_FUNCTION_CALL: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {
                            "name": "find_theaters",
                            "args": {"movie": "Barbie", "location": "Mountain View, CA"},
                        }
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": _NEGLIGIBLE,
        }
    ],
    "promptFeedback": {"safetyRatings": _NEGLIGIBLE},
}
"""``generateContent`` answering with a function call (function-calling REST quickstart)."""

DOC_STREAM_EVENTS: tuple[dict[str, Any], ...] = (
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": "In the quaint little town of Willow Creek, nestled among "
                            "rolling hills and whispering willows"
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": _NEGLIGIBLE,
            }
        ],
        "promptFeedback": {"safetyRatings": _NEGLIGIBLE},
    },
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": ", there existed an extraordinary backpack that possessed an "
                            "astonishing secret. Its unassuming canvas exterior and worn leather "
                            "straps held a hidden realm brimming with wonder and endless "
                            "possibilities."
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": _NEGLIGIBLE,
            }
        ]
    },
)
"""The first two events of ``streamGenerateContent?alt=sse`` (REST get-started page); that
model put ``finishReason: STOP`` on every event."""

DOC_PROMPT_BLOCKED: dict[str, Any] = {
    "promptFeedback": {
        "blockReason": "SAFETY",
        "safetyRatings": [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "MEDIUM"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
        ],
    }
}
"""``generateContent`` for a prompt the safety filter blocked (safety REST quickstart)."""

DOC_EMBED_CONTENT: dict[str, Any] = {
    "embedding": {
        "values": [
            -0.02342152,
            0.01676572,
            0.009261323,
            -0.06383,
            -0.0026262768,
            0.0010187156,
            -0.01125684,
        ]
    }
}
"""``embedContent`` (embeddings REST quickstart; the vector cut as printed there)."""

DOC_BATCH_EMBED_CONTENTS: dict[str, Any] = {
    "embeddings": [
        {"values": [-0.022374554, -0.004560777, 0.013309286, -0.0545072, -0.02090443]},
        {"values": [-0.007975887, -0.02141119, -0.0016711014, -0.061006967, -0.010629714]},
        {"values": [-0.0047850125, 0.008764064, 0.0062852204, -0.017785408, -0.02952513]},
    ]
}
"""``batchEmbedContents`` for three texts (embeddings REST quickstart; vectors cut)."""

DOC_MODELS: dict[str, Any] = {
    "models": [
        {
            "name": "models/gemini-pro",
            "version": "001",
            "displayName": "Gemini Pro",
            "description": "The best model for scaling across a wide range of tasks",
            "inputTokenLimit": 30720,
            "outputTokenLimit": 2048,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "temperature": 0.9,
            "topP": 1,
            "topK": 1,
        },
        {
            "name": "models/embedding-001",
            "version": "001",
            "displayName": "Embedding 001",
            "description": "Obtain a distributed representation of a text.",
            "inputTokenLimit": 2048,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": ["embedContent", "countTextTokens"],
        },
    ]
}
"""Part of ``GET /v1beta/models`` (REST get-started page)."""
