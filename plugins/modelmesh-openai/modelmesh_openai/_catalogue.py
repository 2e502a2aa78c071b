"""The connectors of this plugin and their small default model catalogues.

Prices are USD per 1M tokens as published when this was written; they are defaults meant to
be overridden in configuration (``models.<id>.pricing``), not a source of truth. Free-tier
quotas (``free_limits``: Groq's Free Plan per model, from console.groq.com/docs/rate-limits)
apply only to providers configured with ``free_tier: true`` and are overridden by
``models.<id>.limits``.
"""

from __future__ import annotations

from modelmesh_core.types import Limits, ModelInfo, Pricing

from ._config import Connector

__all__ = ["CATALOGUES", "CONNECTORS"]

CHAT = "generation.text-generation.chat-completion"
CODE = "generation.text-generation.code-generation"
EMBED = "representation.embeddings.text-embeddings"
IMAGE = "generation.image-generation.text-to-image"
TTS = "generation.audio-generation.text-to-speech"
STT = "understanding.audio-understanding.speech-to-text"
MODERATION = "evaluation.content-moderation"
WEB_SEARCH = "retrieval.search.web-search"
GROUNDED = "retrieval.rag.grounded-generation"

_BASIC = frozenset({"system_prompt", "json_mode"})
_TOOLS = _BASIC | {"tool_calling"}
_FULL = _TOOLS | {"structured_output", "logprobs", "multiple_choices"}


def _chat(
    name: str,
    *,
    context: int,
    price: tuple[float, float],
    cached: float | None = None,
    features: frozenset[str] = _TOOLS,
    max_output: int | None = None,
    capabilities: tuple[str, ...] = (CHAT,),
    batch: bool = False,
    free: Limits | None = None,
) -> ModelInfo:
    modes = {"sync", "streaming"} | ({"batch"} if batch else set())
    return ModelInfo(
        name=name,
        capabilities=capabilities,
        delivery_modes=frozenset(modes),
        features=frozenset(features),
        context_window=context,
        max_output_tokens=max_output,
        pricing=Pricing(input=price[0], output=price[1], cached_input=cached),
        free_limits=free,
    )


def _embed(name: str, *, context: int, price: float, batch: bool = False) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=(EMBED,),
        delivery_modes=frozenset({"sync", "batch"} if batch else {"sync"}),
        context_window=context,
        pricing=Pricing(input=price),
    )


_OPENAI = (
    _chat(
        "gpt-4o",
        context=128_000,
        price=(2.5, 10.0),
        cached=1.25,
        max_output=16_384,
        features=_FULL | {"vision"},
        capabilities=(CHAT, CODE),
        batch=True,
    ),
    _chat(
        "gpt-4o-mini",
        context=128_000,
        price=(0.15, 0.6),
        cached=0.075,
        max_output=16_384,
        features=_FULL | {"vision"},
        batch=True,
    ),
    _chat(
        "gpt-4.1",
        context=1_047_576,
        price=(2.0, 8.0),
        cached=0.5,
        max_output=32_768,
        features=_FULL | {"vision"},
        capabilities=(CHAT, CODE),
        batch=True,
    ),
    _chat(
        "gpt-4.1-mini",
        context=1_047_576,
        price=(0.4, 1.6),
        cached=0.1,
        max_output=32_768,
        features=_FULL | {"vision"},
        batch=True,
    ),
    _chat(
        "o4-mini",
        context=200_000,
        price=(1.1, 4.4),
        cached=0.275,
        max_output=100_000,
        features=_TOOLS | {"structured_output", "vision", "reasoning"},
        capabilities=(CHAT, CODE),
        batch=True,
    ),
    _embed("text-embedding-3-small", context=8191, price=0.02, batch=True),
    _embed("text-embedding-3-large", context=8191, price=0.13, batch=True),
    # Non-chat operations (sync only). dall-e-3 is billed per image (standard 1024x1024);
    # gpt-image-1 per token (text in, image out); speech is billed per character and
    # whisper per minute, which the per-token / per-request prices cannot express: set
    # models.<id>.pricing.per_request to your average.
    ModelInfo(name="dall-e-3", capabilities=(IMAGE,), delivery_modes=frozenset({"sync"}),
              context_window=1000,
              pricing=Pricing(per_request=0.04)),
    ModelInfo(name="gpt-image-1", capabilities=(IMAGE,), delivery_modes=frozenset({"sync"}),
              context_window=8000,
              pricing=Pricing(input=5.0, output=40.0)),
    ModelInfo(name="tts-1", capabilities=(TTS,), delivery_modes=frozenset({"sync"}),
              context_window=4096),
    ModelInfo(name="gpt-4o-mini-tts", capabilities=(TTS,), delivery_modes=frozenset({"sync"}),
              context_window=2000),
    ModelInfo(name="whisper-1", capabilities=(STT,), delivery_modes=frozenset({"sync"}),
              context_window=224),
    ModelInfo(name="gpt-4o-transcribe", capabilities=(STT,),
              delivery_modes=frozenset({"sync"}), context_window=16_000,
              pricing=Pricing(input=2.5, output=10.0)),
    ModelInfo(name="omni-moderation-latest", capabilities=(MODERATION,),
              delivery_modes=frozenset({"sync"}), context_window=32_768),
)

_AZURE = tuple(m for m in _OPENAI if m.name in {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"})

CATALOGUES: dict[str, tuple[ModelInfo, ...]] = {
    "openai.llm.v1": _OPENAI,
    "azure.openai.v1": _AZURE,
    "groq.api.v1": (
        _chat("llama-3.3-70b-versatile", context=131_072, price=(0.59, 0.79), max_output=32_768,
              free=Limits(rpm=30, rpd=1_000, tpm=12_000, tpd=100_000, free=True)),
        _chat("llama-3.1-8b-instant", context=131_072, price=(0.05, 0.08), max_output=8192,
              free=Limits(rpm=30, rpd=14_400, tpm=6_000, tpd=500_000, free=True)),
        _chat(
            "openai/gpt-oss-120b",
            context=131_072,
            price=(0.15, 0.75),
            features=_TOOLS | {"reasoning"},
        ),
    ),
    "deepseek.api.v1": (
        _chat(
            "deepseek-chat",
            context=65_536,
            price=(0.27, 1.10),
            cached=0.07,
            max_output=8192,
            capabilities=(CHAT, CODE),
        ),
        _chat(
            "deepseek-reasoner",
            context=65_536,
            price=(0.55, 2.19),
            cached=0.14,
            max_output=32_768,
            features=_BASIC | {"reasoning"},
        ),
    ),
    "mistral.api.v1": (
        _chat(
            "mistral-large-latest",
            context=131_072,
            price=(2.0, 6.0),
            features=_TOOLS | {"structured_output"},
        ),
        _chat(
            "mistral-small-latest",
            context=32_768,
            price=(0.1, 0.3),
            features=_TOOLS | {"structured_output"},
        ),
        _chat("codestral-latest", context=256_000, price=(0.3, 0.9), capabilities=(CODE, CHAT)),
        _embed("mistral-embed", context=8192, price=0.1),
    ),
    "together.api.v1": (
        _chat("meta-llama/Llama-3.3-70B-Instruct-Turbo", context=131_072, price=(0.88, 0.88)),
        _chat("Qwen/Qwen2.5-72B-Instruct-Turbo", context=32_768, price=(1.2, 1.2)),
        _embed("BAAI/bge-large-en-v1.5", context=512, price=0.02),
    ),
    "openrouter.gateway.v1": (
        _chat(
            "openai/gpt-4o-mini", context=128_000, price=(0.15, 0.6), features=_FULL | {"vision"}
        ),
        _chat(
            "anthropic/claude-3.5-sonnet",
            context=200_000,
            price=(3.0, 15.0),
            features=_TOOLS | {"vision"},
            capabilities=(CHAT, CODE),
        ),
        _chat("meta-llama/llama-3.3-70b-instruct", context=131_072, price=(0.13, 0.4)),
    ),
    "xai.grok.v1": (
        _chat(
            "grok-3",
            context=131_072,
            price=(3.0, 15.0),
            cached=0.75,
            features=_TOOLS | {"structured_output"},
        ),
        _chat(
            "grok-3-mini",
            context=131_072,
            price=(0.3, 0.5),
            cached=0.075,
            features=_TOOLS | {"structured_output", "reasoning"},
        ),
    ),
    "perplexity.search.v1": (
        _chat(
            "sonar",
            context=128_000,
            price=(1.0, 1.0),
            features=_BASIC,
            capabilities=(CHAT, WEB_SEARCH, GROUNDED),
        ),
        _chat(
            "sonar-pro",
            context=200_000,
            price=(3.0, 15.0),
            features=_BASIC,
            max_output=8000,
            capabilities=(CHAT, WEB_SEARCH, GROUNDED),
        ),
        _chat(
            "sonar-reasoning",
            context=128_000,
            price=(1.0, 5.0),
            features=_BASIC | {"reasoning"},
            capabilities=(CHAT, WEB_SEARCH, GROUNDED),
        ),
    ),
    "fireworks.api.v1": (
        _chat(
            "accounts/fireworks/models/llama-v3p3-70b-instruct", context=131_072, price=(0.9, 0.9)
        ),
        _chat(
            "accounts/fireworks/models/llama-v3p1-8b-instruct", context=131_072, price=(0.2, 0.2)
        ),
    ),
    "ollama.local.v1": (
        _chat("llama3.2", context=131_072, price=(0.0, 0.0)),
        _chat("qwen2.5-coder", context=32_768, price=(0.0, 0.0), capabilities=(CODE, CHAT)),
        _embed("nomic-embed-text", context=8192, price=0.0),
    ),
    # Local servers serve whatever the user loaded: their models come from list_models().
    "lmstudio.local.v1": (),
    "vllm.local.v1": (),
    "localai.local.v1": (),
    "llamacpp.local.v1": (),
}

CONNECTORS: tuple[Connector, ...] = (
    Connector(
        name="openai.llm.v1",
        description="OpenAI (chat completions, embeddings)",
        default_base_url="https://api.openai.com/v1",
        key_env=("OPENAI_API_KEY",),
        base_url_env=("OPENAI_BASE_URL",),
        batches=True,
    ),
    Connector(
        name="groq.api.v1",
        description="Groq (OpenAI-compatible)",
        default_base_url="https://api.groq.com/openai/v1",
        key_env=("GROQ_API_KEY",),
    ),
    Connector(
        name="deepseek.api.v1",
        description="DeepSeek (OpenAI-compatible)",
        default_base_url="https://api.deepseek.com/v1",
        key_env=("DEEPSEEK_API_KEY",),
    ),
    Connector(
        name="mistral.api.v1",
        description="Mistral AI (OpenAI-compatible)",
        default_base_url="https://api.mistral.ai/v1",
        key_env=("MISTRAL_API_KEY",),
    ),
    Connector(
        name="together.api.v1",
        description="Together AI (OpenAI-compatible)",
        default_base_url="https://api.together.xyz/v1",
        key_env=("TOGETHER_API_KEY",),
    ),
    Connector(
        name="openrouter.gateway.v1",
        description="OpenRouter gateway",
        default_base_url="https://openrouter.ai/api/v1",
        key_env=("OPENROUTER_API_KEY",),
    ),
    Connector(
        name="xai.grok.v1",
        description="xAI Grok (OpenAI-compatible)",
        default_base_url="https://api.x.ai/v1",
        key_env=("XAI_API_KEY",),
    ),
    Connector(
        name="perplexity.search.v1",
        description="Perplexity Sonar (search-grounded chat)",
        default_base_url="https://api.perplexity.ai",
        key_env=("PERPLEXITY_API_KEY", "PPLX_API_KEY"),
    ),
    Connector(
        name="fireworks.api.v1",
        description="Fireworks AI (OpenAI-compatible)",
        default_base_url="https://api.fireworks.ai/inference/v1",
        key_env=("FIREWORKS_API_KEY",),
    ),
    Connector(
        name="azure.openai.v1",
        description="Azure OpenAI (deployments or v1 paths, api-key header or Entra ID token)",
        default_base_url=None,
        key_env=("AZURE_OPENAI_API_KEY",),
        base_url_env=("AZURE_OPENAI_ENDPOINT",),
        auth="header:api-key",
        azure=True,
    ),
    Connector(
        name="ollama.local.v1",
        description="Ollama local server (OpenAI-compatible API)",
        default_base_url="http://127.0.0.1:11434/v1",
        host_env="OLLAMA_HOST",
        auth="none",
        local=True,
    ),
    Connector(
        name="lmstudio.local.v1",
        description="LM Studio local server",
        default_base_url="http://127.0.0.1:1234/v1",
        host_env="LMSTUDIO_HOST",
        auth="none",
        local=True,
    ),
    Connector(
        name="vllm.local.v1",
        description="vLLM OpenAI-compatible server",
        default_base_url="http://127.0.0.1:8000/v1",
        host_env="VLLM_HOST",
        auth="none",
        local=True,
    ),
    Connector(
        name="localai.local.v1",
        description="LocalAI server",
        default_base_url="http://127.0.0.1:8080/v1",
        host_env="LOCALAI_HOST",
        auth="none",
        local=True,
    ),
    Connector(
        name="llamacpp.local.v1",
        description="llama.cpp llama-server",
        default_base_url="http://127.0.0.1:8080/v1",
        host_env="LLAMACPP_HOST",
        auth="none",
        local=True,
    ),
)
