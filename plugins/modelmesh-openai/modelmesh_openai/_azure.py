"""Azure OpenAI (``azure.openai.v1``): the OpenAI adapter with Azure's URLs, auth and errors.

* **Deployments.** A model's upstream id is the *deployment name*. Deployment style (the
  default): ``{endpoint}/openai/deployments/{deployment}/chat/completions`` and
  ``…/embeddings``, with the ``api-version`` query parameter (``config.api_version``, else
  ``OPENAI_API_VERSION``, else :data:`AZURE_API_VERSION`). GA v1 style
  (``api_style: v1`` or a base URL ending in ``/openai/v1``):
  ``{endpoint}/openai/v1/chat/completions`` with the deployment in the body's ``model`` and no
  ``api-version``.
* **Auth.** ``api-key: <key>`` (key rotation as for OpenAI), or a Microsoft Entra ID token as
  ``Authorization: Bearer <token>`` (static, or from a provider callable, refreshed after
  ``entra_token_ttl`` seconds or after a 401).
* **Errors.** Azure's bodies (``{"error": {"code": "429" | "DeploymentNotFound" |
  "content_filter", "message", "innererror"?}}``); a prompt rejected by the content filter
  (400, ``code: content_filter``, ``innererror.content_filter_result``) and an answer cut by
  it (``finish_reason: "content_filter"``, in a response or a stream) raise
  :class:`~modelmesh_core.errors.ContentFilterError` — the caller's error, not a rotation.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, cast
from urllib.parse import quote

from yarl import URL

from modelmesh_core.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    ProviderError,
    RateLimitError,
)
from modelmesh_core.redaction import redact, register_secret
from modelmesh_core.types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ProviderContext,
    Timeouts,
)

from ._adapter import OpenAIAdapter
from ._config import AZURE_API_VERSION, AzureOpenAIConfig, Connector, OpenAIConfig

__all__ = ["AzureOpenAIAdapter"]

_TOKEN_ENV = "AZURE_OPENAI_AD_TOKEN"
_RETRY_AFTER_TEXT = re.compile(r"(?i)retry after (\d+(?:\.\d+)?) second")


def _load_provider(spec: str) -> Callable[[], Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError([f"config.entra_token_provider: {spec!r} is not 'package.module:name'"])
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([f"config.entra_token_provider: cannot load {spec!r}: {exc}"]) from None
    if not callable(target):
        raise ConfigError([f"config.entra_token_provider: {spec!r} is not callable"])
    return target  # type: ignore[no-any-return]


def _filtered_categories(result: Any) -> list[str]:
    """Names of the content-filter categories marked ``filtered`` (or ``detected`` + filtered)."""
    if not isinstance(result, dict):
        return []
    names = []
    for name, verdict in result.items():
        if isinstance(verdict, dict) and verdict.get("filtered"):
            severity = verdict.get("severity")
            names.append(f"{name} ({severity})" if severity else name)
    return sorted(names)


class AzureOpenAIAdapter(OpenAIAdapter):
    """``ProviderAdapter`` for Azure OpenAI (deployment or GA v1 paths, api-key or Entra ID)."""

    def __init__(
        self,
        context: ProviderContext,
        config: OpenAIConfig | None,
        connector: Connector,
    ) -> None:
        if config is None:
            config = AzureOpenAIConfig()
        elif not isinstance(config, AzureOpenAIConfig):
            # An OpenAIConfig built by hand: same fields, Azure's defaults for the rest.
            config = _as_azure(config)
        self.azure_config: AzureOpenAIConfig = config
        super().__init__(context, config, connector)
        endpoint = self.base_url  # ends with /openai or /openai/v1 (Connector.azure)
        if endpoint.endswith("/openai/v1"):
            self.api_style = "v1"
            root = endpoint
        else:
            self.api_style = config.api_style
            root = endpoint + "/v1" if self.api_style == "v1" else endpoint
        self._root = root
        self.api_version = (
            config.api_version or os.environ.get("OPENAI_API_VERSION") or AZURE_API_VERSION
        )
        self._version_query = "" if self.api_style == "v1" else f"?api-version={self.api_version}"
        self._models_url = URL(f"{root}/models{self._version_query}")
        self._token_provider: Callable[[], Any] | None = None
        self._token_until = 0.0
        if config.auth == "entra":
            common = {k: v for k, v in self._headers[0].items() if k.lower() != "api-key"}
            self._ring = None
            self._common_headers = common
            token = config.entra_token or os.environ.get(_TOKEN_ENV)
            if config.entra_token_provider:
                self._token_provider = _load_provider(config.entra_token_provider)
            elif token:
                self._use_token(token, until=float("inf"))
            else:
                raise ConfigError([
                    f"providers.{self.name}.config: auth is 'entra' but no token is given: set "
                    f"entra_token, entra_token_provider or {_TOKEN_ENV}"
                ])
            if self._token_provider is not None:
                self._set_headers(common)

    def __repr__(self) -> str:
        return f"AzureOpenAIAdapter({self.name!r}, style={self.api_style!r})"

    # ------------------------------------------------------------------ URLs

    def _chat_url(self, upstream_id: str) -> URL:
        url = self._chat_urls.get(upstream_id)
        if url is None:
            if self.api_style == "v1":
                url = URL(f"{self._root}/chat/completions")
            else:
                deployment = quote(upstream_id, safe="")
                url = URL(
                    f"{self._root}/deployments/{deployment}/chat/completions"
                    f"{self._version_query}",
                    encoded=True,
                )
            self._chat_urls[upstream_id] = url
        return url

    def _embed_url(self, upstream_id: str) -> URL:
        url = self._embed_urls.get(upstream_id)
        if url is None:
            if self.api_style == "v1":
                url = URL(f"{self._root}/embeddings")
            else:
                deployment = quote(upstream_id, safe="")
                url = URL(
                    f"{self._root}/deployments/{deployment}/embeddings{self._version_query}",
                    encoded=True,
                )
            self._embed_urls[upstream_id] = url
        return url

    def _op_url(self, upstream_id: str, path: str) -> URL:
        key = (path, upstream_id)
        url = self._op_urls.get(key)
        if url is None:
            if self.api_style == "v1":
                url = URL(f"{self._root}/{path}")
            else:
                deployment = quote(upstream_id, safe="")
                url = URL(f"{self._root}/deployments/{deployment}/{path}{self._version_query}",
                          encoded=True)
            self._op_urls[key] = url
        return url

    async def _prepare_call(self) -> None:
        await self._ensure_token()

    # ------------------------------------------------------------------ Entra ID tokens

    def _set_headers(self, headers: dict[str, str]) -> None:
        self._headers = [headers]
        self._stream_headers = [{**headers, "Accept": "text/event-stream"}]

    def _use_token(self, token: str, until: float) -> None:
        register_secret(token)
        self._set_headers({**self._common_headers, "Authorization": f"Bearer {token}"})
        self._token_until = until

    async def _ensure_token(self) -> None:
        provider = self._token_provider
        if provider is None or self.clock() < self._token_until:
            return
        try:
            token = provider()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:  # the provider is user code: report any failure as auth
            raise AuthenticationError(
                f"the Entra ID token provider failed: {type(exc).__name__}: "
                f"{redact(str(exc))}",
                provider_id=self.name,
                retryable=False,
            ) from None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(
                "the Entra ID token provider returned no token", provider_id=self.name
            )
        self._use_token(token, self.clock() + self.azure_config.entra_token_ttl)

    def _rejected(self) -> None:
        if self._token_provider is not None:
            self._token_until = 0.0  # fetch a fresh token for the next call

    # ------------------------------------------------------------------ ProviderAdapter

    def _filtered(self, model_id: str, streamed: bool) -> ContentFilterError:
        where = "the streamed answer" if streamed else "the answer"
        return ContentFilterError(
            f"Azure's content filter stopped {where} (finish_reason content_filter); "
            "rephrase the request or review the deployment's content filter configuration",
            provider_id=self.name,
            model_id=model_id,
            status=200,
            retryable=False,
        )

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """A chat completion; a filtered answer raises ``ContentFilterError``."""
        await self._ensure_token()
        try:
            response = await super().complete(model, request, timeouts)
        except AuthenticationError:
            self._rejected()
            raise
        if response.finish_reason == "content_filter":
            raise self._filtered(model.id, streamed=False)
        return response

    async def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """A streamed chat completion; a chunk finishing with ``content_filter`` raises
        ``ContentFilterError`` after the chunks delivered before it."""
        await self._ensure_token()
        try:
            chunks = cast(AsyncGenerator[CompletionResponse, None],
                          super().stream(model, request, timeouts))
            async with contextlib.aclosing(chunks) as inner:
                async for chunk in inner:
                    if chunk.finish_reason == "content_filter":
                        raise self._filtered(model.id, streamed=True)
                    yield chunk
        except AuthenticationError:
            self._rejected()
            raise

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """Embeddings from an embedding deployment."""
        await self._ensure_token()
        try:
            return await super().embed(model, request, timeouts)
        except AuthenticationError:
            self._rejected()
            raise

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The models the resource knows (``GET /openai/models`` or ``/openai/v1/models``)."""
        await self._ensure_token()
        return await super().list_models(timeouts)

    # ------------------------------------------------------------------ errors

    def error_from(
        self,
        status: int | None,
        raw: bytes,
        headers: Mapping[str, str],
        model_id: str | None,
    ) -> ProviderError:
        """Azure's error shapes first (content filter, missing deployment, 429 wording), then
        the OpenAI translation."""
        try:
            data = self._loads(raw) if raw else None
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return super().error_from(status, raw, headers, model_id)
        code = str(error.get("code") or "")
        message = redact(str(error.get("message") or "")) or "(no error message)"
        inner = error.get("innererror")
        inner = inner if isinstance(inner, dict) else {}
        common: dict[str, Any] = {"provider_id": self.name, "model_id": model_id,
                                  "status": status}
        if code == "content_filter" or inner.get("code") == "ResponsibleAIPolicyViolation":
            categories = _filtered_categories(inner.get("content_filter_result"))
            detail = f" [filtered: {', '.join(categories)}]" if categories else ""
            return ContentFilterError(
                f"{message}{detail}; the prompt was rejected by Azure's content filter",
                retryable=False,
                **common,
            )
        if code == "DeploymentNotFound":
            deployment = model_id.split(".", 1)[1] if model_id and "." in model_id else model_id
            return ProviderError(
                f"{message} [code=DeploymentNotFound]; the model's upstream id must be the name "
                f"of a deployment of this resource (got {deployment!r})",
                retryable=False,
                **common,
            )
        result = super().error_from(status, raw, headers, model_id)
        if isinstance(result, RateLimitError) and result.retry_after is None:
            match = _RETRY_AFTER_TEXT.search(message)
            if match:
                result.retry_after = float(match.group(1))
        return result


def _as_azure(config: OpenAIConfig) -> AzureOpenAIConfig:
    return AzureOpenAIConfig(
        base_url=config.base_url,
        api_key=config.api_key,
        keys=config.keys,
        organization=config.organization,
        project=config.project,
        headers=dict(config.headers),
        api_version=config.api_version,
        key_cooldown=config.key_cooldown,
        auth_cooldown=config.auth_cooldown,
    )
