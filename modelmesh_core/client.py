"""OpenAI-shaped clients over an in-process mesh.

Code written for the OpenAI SDK changes three things: the import, the client creation, and
the model name (a pool, capability or model id)::

    import modelmesh_core
    client = modelmesh_core.create("chat-completion")          # like openai.OpenAI()
    reply = client.chat.completions.create(
        model="chat-completion", messages=[{"role": "user", "content": "Hi"}])
    print(reply.choices[0].message.content, reply.model, reply.usage.total_tokens)

Responses are :class:`OpenAIObject` trees with OpenAI's attribute names (``choices``,
``message``, ``delta``, ``usage`` …), built from the same wire encoders the proxy uses, so the
in-process and HTTP answers are identical. Errors are ModelMesh's typed exceptions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from .config import MeshConfig
from .mesh import ModelMesh
from .server.sse import StreamEncoder
from .types import CompletionResponse, RoutingOptions
from .wire import (
    completion_to_dict,
    embeddings_to_dict,
    include_usage,
    parse_chat_request,
    parse_embeddings_request,
)

__all__ = ["AsyncMeshClient", "MeshClient", "OpenAIObject", "create", "create_async"]

ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | MeshConfig | None


_OPTIONAL = frozenset({
    "content", "role", "tool_calls", "refusal", "function_call", "logprobs", "usage",
    "finish_reason", "system_fingerprint", "prompt_tokens_details", "completion_tokens_details",
    "service_tier", "audio", "annotations", "name", "id",
})


class OpenAIObject:
    """Attribute access over an OpenAI-shaped JSON object (``obj.choices[0].message``)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            if name in _OPTIONAL:
                return None  # absent optional fields read as None, as in the OpenAI SDK
            raise AttributeError(name) from None
        return _wrap(value)

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OpenAIObject):
            return self._data == other._data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def model_dump(self) -> dict[str, Any]:
        """The plain dict (OpenAI SDK name)."""
        return dict(self._data)

    to_dict = model_dump

    def __repr__(self) -> str:
        kind = self._data.get("object", "object")
        return f"<OpenAIObject {kind} {dict(self._data)!r}>"


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return OpenAIObject(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _chat_body(model: str | None, default: str | None, params: dict[str, Any]) -> dict[str, Any]:
    name = model or default
    if not name:
        raise ValueError("pass model=... (a pool, capability or model id) or give create() a "
                         "default capability")
    params = {k: v for k, v in params.items() if v is not None}
    params["model"] = name
    return params


def _options(extra: Mapping[str, Any]) -> RoutingOptions | None:
    session = extra.get("session_id")
    provider = extra.get("preferred_provider")
    if session is None and provider is None:
        return None
    return RoutingOptions(session_id=session, preferred_provider=provider)


class _Usage:
    """Running totals of what a client used."""

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0

    def add(self, usage: Mapping[str, int] | None, metadata: Mapping[str, Any] | None) -> None:
        self.requests += 1
        if usage:
            self.prompt_tokens += usage.get("prompt_tokens", 0)
            self.completion_tokens += usage.get("completion_tokens", 0)
        if metadata:
            self.cost += metadata.get("cost", 0.0) or 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "cost": round(self.cost, 8)}


async def _chunks(
    agen: AsyncIterator[CompletionResponse], want_usage: bool, usage: _Usage,
) -> AsyncIterator[OpenAIObject]:
    """Encode router chunks exactly as the proxy does (one shared encoder); the usage and
    cost counted are the stream's (cost from its last chunk, where the router puts it)."""
    encoder: StreamEncoder | None = None
    async for chunk in agen:
        if encoder is None:
            encoder = StreamEncoder(chunk, include_usage=want_usage)
        obj = encoder.encode(chunk)
        if obj is not None:
            yield OpenAIObject(obj)
    if encoder is None:
        return
    usage.add(encoder.usage, encoder.last.metadata)
    closing = encoder.closing()
    if closing is not None:
        yield OpenAIObject(closing)


# --------------------------------------------------------------------------- async client


class _AsyncCompletions:
    def __init__(self, client: AsyncMeshClient) -> None:
        self._client = client

    async def create(
        self, *, messages: list[dict[str, Any]], model: str | None = None, stream: bool = False,
        **params: Any,
    ) -> Any:
        """Like ``AsyncOpenAI().chat.completions.create``; ``stream=True`` returns an async
        iterator of chunks. Extra keywords ``session_id`` / ``preferred_provider`` steer
        routing."""
        client = self._client
        routing: dict[str, Any] = {
            k: params.pop(k) for k in ("session_id", "preferred_provider") if k in params}
        params.pop("extra_headers", None)
        params.pop("timeout", None)
        body = _chat_body(model, client.default_model, {"messages": messages, **params})
        if stream:
            body["stream"] = True
        name, request = parse_chat_request(body)
        mesh = await client._ready()
        options = _options(routing)
        if stream:
            return _chunks(mesh.router.stream(name, request, options), include_usage(request),
                           client._usage)
        resp = await mesh.router.complete(name, request, options)
        client._usage.add(resp.usage, resp.metadata)
        return OpenAIObject(completion_to_dict(resp))


class _AsyncChat:
    def __init__(self, client: AsyncMeshClient) -> None:
        self.completions = _AsyncCompletions(client)


class _AsyncEmbeddings:
    def __init__(self, client: AsyncMeshClient) -> None:
        self._client = client

    async def create(self, *, input: Any, model: str | None = None, **params: Any) -> Any:
        """Like ``AsyncOpenAI().embeddings.create``."""
        client = self._client
        body = _chat_body(model, client.default_model, {"input": input, **params})
        name, request = parse_embeddings_request(body)
        mesh = await client._ready()
        resp = await mesh.router.embed(name, request)
        client._usage.add(resp.usage, None)
        return OpenAIObject(embeddings_to_dict(resp, params.get("encoding_format") or "float"))


class _AsyncModels:
    def __init__(self, client: AsyncMeshClient) -> None:
        self._client = client

    async def list(self) -> Any:
        """Pools (virtual models) and models, in OpenAI's list shape."""
        mesh = await self._client._ready()
        return OpenAIObject(_models_list(mesh))


def _models_list(mesh: ModelMesh) -> dict[str, Any]:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "modelmesh"}
            for name in mesh.pools]
    data += [{"id": mid, "object": "model", "created": 0, "owned_by": m.provider}
             for mid, m in mesh.models.items()]
    return {"object": "list", "data": data}


class AsyncMeshClient:
    """Shaped like ``openai.AsyncOpenAI``; the mesh starts on first use (or ``async with``)."""

    def __init__(self, mesh: ModelMesh, default_model: str | None = None) -> None:
        self.mesh = mesh
        self.default_model = default_model
        self._lock: asyncio.Lock | None = None
        self._usage = _Usage()
        self.chat = _AsyncChat(self)
        self.embeddings = _AsyncEmbeddings(self)
        self.models = _AsyncModels(self)

    async def _ready(self) -> ModelMesh:
        if self.mesh.started:
            return self.mesh
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.mesh.started:
                await self.mesh.initialize()
        return self.mesh

    async def describe(self) -> dict[str, Any]:
        """Providers, models, pools and stages in force."""
        return (await self._ready()).describe()

    async def explain(
        self, model: str | None = None, messages: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Which model would answer this request, and why the others would not."""
        mesh = await self._ready()
        name, request = parse_chat_request(_chat_body(
            model, self.default_model, {"messages": messages or [{"role": "user",
                                                                 "content": ""}], **params}))
        return await mesh.router.explain(name, request)

    async def pool_status(self) -> dict[str, Any]:
        """Per pool, each model's state."""
        return (await self._ready()).pool_status()

    @property
    def usage(self) -> dict[str, Any]:
        """Requests, tokens and cost used through this client."""
        return self._usage.as_dict()

    async def close(self) -> None:
        """Shut the mesh down."""
        await self.mesh.shutdown()

    async def __aenter__(self) -> AsyncMeshClient:
        await self._ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- sync client


async def _anext(agen: AsyncIterator[OpenAIObject]) -> OpenAIObject:
    return await agen.__anext__()


class _SyncStream:
    """A blocking iterator over an async chunk stream running on the mesh's loop thread."""

    def __init__(self, mesh: ModelMesh, agen: AsyncIterator[OpenAIObject]) -> None:
        self._mesh = mesh
        self._agen = agen
        self._done = False

    def __iter__(self) -> Iterator[OpenAIObject]:
        return self

    def __next__(self) -> OpenAIObject:
        if self._done:
            raise StopIteration
        try:
            return self._mesh.run_sync(_anext(self._agen))
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None

    def close(self) -> None:
        """Stop the stream early (the upstream request is cancelled)."""
        if not self._done:
            self._done = True
            self._mesh.run_sync(self._agen.aclose())  # type: ignore[attr-defined]

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SyncCompletions:
    def __init__(self, client: MeshClient) -> None:
        self._client = client

    def create(
        self, *, messages: list[dict[str, Any]], model: str | None = None, stream: bool = False,
        **params: Any,
    ) -> Any:
        """Like ``OpenAI().chat.completions.create``; ``stream=True`` returns an iterator."""
        client = self._client
        result = client.mesh.run_sync(client._async.chat.completions.create(
            messages=messages, model=model, stream=stream, **params))
        if stream:
            return _SyncStream(client.mesh, result)
        return result


class _SyncChat:
    def __init__(self, client: MeshClient) -> None:
        self.completions = _SyncCompletions(client)


class _SyncEmbeddings:
    def __init__(self, client: MeshClient) -> None:
        self._client = client

    def create(self, *, input: Any, model: str | None = None, **params: Any) -> Any:
        """Like ``OpenAI().embeddings.create``."""
        c = self._client
        return c.mesh.run_sync(c._async.embeddings.create(input=input, model=model, **params))


class _SyncModels:
    def __init__(self, client: MeshClient) -> None:
        self._client = client

    def list(self) -> Any:
        """Pools (virtual models) and models, in OpenAI's list shape."""
        return OpenAIObject(_models_list(self._client.mesh))


class MeshClient:
    """Shaped like ``openai.OpenAI``, running its mesh on a private loop thread.

    Works from plain scripts and from inside a running event loop's thread (the call blocks
    that thread until the answer arrives).
    """

    def __init__(self, mesh: ModelMesh, default_model: str | None = None) -> None:
        self.mesh = mesh
        self.default_model = default_model
        self._async = AsyncMeshClient(mesh, default_model)
        self.chat = _SyncChat(self)
        self.embeddings = _SyncEmbeddings(self)
        self.models = _SyncModels(self)

    def describe(self) -> dict[str, Any]:
        """Providers, models, pools and stages in force."""
        return self.mesh.describe()

    def explain(self, model: str | None = None, messages: list[dict[str, Any]] | None = None,
                **params: Any) -> dict[str, Any]:
        """Which model would answer this request, and why the others would not."""
        return self.mesh.run_sync(self._async.explain(model, messages, **params))

    def pool_status(self) -> dict[str, Any]:
        """Per pool, each model's state."""
        return self.mesh.pool_status()

    @property
    def usage(self) -> dict[str, Any]:
        """Requests, tokens and cost used through this client."""
        return self._async.usage

    def close(self) -> None:
        """Shut the mesh and its loop thread down."""
        if self.mesh.started:
            self.mesh.shutdown_sync()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(
    capability: str | None = None, *, config: ConfigSource = None, plugins: tuple[object, ...] = (),
    **mesh_options: Any,
) -> MeshClient:
    """A client shaped like ``openai.OpenAI``.

    ``capability`` is the default ``model`` (a pool, capability alias/path or model id).
    With no ``config``, providers are auto-detected from environment variables
    (``OPENAI_API_KEY``, ``GROQ_API_KEY``, …) and one pool per capability is formed.
    """
    mesh = ModelMesh(config, plugins=plugins, **mesh_options)
    mesh.initialize_sync()
    return MeshClient(mesh, capability)


def create_async(
    capability: str | None = None, *, config: ConfigSource = None,
    plugins: tuple[object, ...] = (), **mesh_options: Any,
) -> AsyncMeshClient:
    """A client shaped like ``openai.AsyncOpenAI`` (the mesh starts on first use)."""
    return AsyncMeshClient(ModelMesh(config, plugins=plugins, **mesh_options), capability)
