"""The registered connectors, their catalogues, and config resolution against the environment."""

from __future__ import annotations

import pytest

from modelmesh_core.capabilities import CapabilityTree
from modelmesh_core.errors import ConfigError
from modelmesh_core.types import ALL_DELIVERY_MODES, ALL_FEATURES, ProviderSpec
from modelmesh_openai import AzureOpenAIConfig, OpenAIConfig, modelmesh_providers
from modelmesh_openai._catalogue import CONNECTORS

SPECS = {spec.name: spec for spec in modelmesh_providers()}
EXPECTED = {
    "openai.llm.v1",
    "groq.api.v1",
    "deepseek.api.v1",
    "mistral.api.v1",
    "together.api.v1",
    "openrouter.gateway.v1",
    "xai.grok.v1",
    "perplexity.search.v1",
    "fireworks.api.v1",
    "azure.openai.v1",
    "ollama.local.v1",
    "lmstudio.local.v1",
    "vllm.local.v1",
    "localai.local.v1",
    "llamacpp.local.v1",
}


def test_every_connector_is_registered_once() -> None:
    specs = modelmesh_providers()
    assert all(isinstance(spec, ProviderSpec) for spec in specs)
    assert [s.name for s in specs] == [c.name for c in CONNECTORS]
    assert set(SPECS) == EXPECTED and len(specs) == len(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_shape(name: str) -> None:
    spec = SPECS[name]
    expected = AzureOpenAIConfig if name == "azure.openai.v1" else OpenAIConfig
    assert spec.config_type is expected
    assert callable(spec.factory)
    assert spec.description
    if name.endswith(".local.v1"):
        assert spec.local is True and spec.auth == "none"
        assert spec.default_base_url.startswith("http://127.0.0.1:")
        assert spec.env_vars and spec.env_vars[0].endswith("_HOST")
    else:
        assert spec.local is False
        assert spec.env_vars and spec.env_vars[0].endswith("_API_KEY")
        assert spec.auth == ("header:api-key" if name == "azure.openai.v1" else "bearer")
        if name != "azure.openai.v1":
            assert spec.default_base_url.startswith("https://")


def test_catalogues_are_valid() -> None:
    tree = CapabilityTree()
    for spec in SPECS.values():
        names = [m.name for m in spec.catalogue]
        assert len(names) == len(set(names)), spec.name
        for info in spec.catalogue:
            for capability in info.capabilities:
                assert capability in tree and tree.is_leaf(capability), (spec.name, capability)
            assert info.features <= ALL_FEATURES
            assert info.delivery_modes <= ALL_DELIVERY_MODES
            assert info.context_window and info.context_window > 0
            assert info.pricing.input >= 0 and info.pricing.output >= 0
    hosted = [s for s in SPECS.values() if not s.local]
    assert all(s.catalogue for s in hosted)
    assert any(
        "text-embeddings" in c for m in SPECS["openai.llm.v1"].catalogue for c in m.capabilities
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai.llm.v1", "https://api.openai.com/v1"),
        ("groq.api.v1", "https://api.groq.com/openai/v1"),
        ("perplexity.search.v1", "https://api.perplexity.ai"),
        ("ollama.local.v1", "http://127.0.0.1:11434/v1"),
    ],
)
def test_default_base_url(context, monkeypatch, name, expected) -> None:
    for var in ("OPENAI_BASE_URL", "OLLAMA_HOST"):
        monkeypatch.delenv(var, raising=False)
    adapter = SPECS[name].factory(context, None)
    assert adapter.base_url == expected


def test_key_from_environment(context, monkeypatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-from-the-environment-123")
    adapter = SPECS["groq.api.v1"].factory(context, OpenAIConfig())
    assert adapter._headers[0]["Authorization"] == "Bearer gsk-from-the-environment-123"
    configured = SPECS["groq.api.v1"].factory(context, OpenAIConfig(api_key="gsk-configured"))
    assert configured._headers[0]["Authorization"] == "Bearer gsk-configured"


def test_no_key_means_no_auth_header(context, monkeypatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    adapter = SPECS["mistral.api.v1"].factory(context, OpenAIConfig())
    assert "Authorization" not in adapter._headers[0]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:9999", "http://127.0.0.1:9999/v1"),
        ("0.0.0.0", "http://127.0.0.1:11434/v1"),
        ("https://ollama.lan", "https://ollama.lan:11434/v1"),
        ("http://box:1234/custom/", "http://box:1234/custom"),
    ],
)
def test_ollama_host(context, monkeypatch, host, expected) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert SPECS["ollama.local.v1"].factory(context, OpenAIConfig()).base_url == expected


def test_azure_needs_an_endpoint(context, monkeypatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    with pytest.raises(ConfigError) as caught:
        SPECS["azure.openai.v1"].factory(context, OpenAIConfig(api_key="k"))
    assert "AZURE_OPENAI_ENDPOINT" in str(caught.value)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/")
    adapter = SPECS["azure.openai.v1"].factory(context, OpenAIConfig(api_key="k"))
    assert adapter.base_url == "https://res.openai.azure.com/openai"
    assert str(adapter._chat_url("gpt4o-deploy")) == (
        "https://res.openai.azure.com/openai/deployments/gpt4o-deploy/chat/completions"
        "?api-version=2024-10-21"
    )
    assert adapter._headers[0]["api-key"] == "k"
