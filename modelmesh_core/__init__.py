"""ModelMesh: capability-driven AI model routing with automatic failover.

Importing this package has no side effects: no plugin discovery, no logging sinks
(``loguru`` is disabled for ``modelmesh_core`` until an application enables it), and it stays
cheap: the configuration machinery, the mesh and the clients load on first use.
"""

from __future__ import annotations

from .capabilities import CapabilityTree
from .errors import (
    AllProvidersExhaustedError,
    AuthenticationError,
    BatchRequestNotRunError,
    BudgetExceededError,
    CapabilityNotFoundError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    ModelMeshError,
    NoActiveModelError,
    PluginError,
    PluginLoadWarning,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    RoutingError,
    StreamInterruptedError,
)
from .hookspecs import hookimpl, hookspec
from .pipeline import PipelineStage, RoutingPipeline
from .pools import CapabilityPool, Services
from .types import (
    BatchJob,
    CapabilitySpec,
    CompletionRequest,
    CompletionResponse,
    DiscoverySpec,
    EmbeddingRequest,
    EmbeddingResponse,
    FilterSpec,
    MiddlewareSpec,
    Model,
    ModelInfo,
    PipelineContext,
    PipelineRequest,
    PipelineResult,
    Pricing,
    Provider,
    ProviderContext,
    ProviderSpec,
    RoutingDecision,
    RoutingOptions,
    SecretStoreSpec,
    SinkSpec,
    StageSpec,
    StorageSpec,
    StrategySpec,
    Timeouts,
    ToolCall,
)

__version__ = "0.1.0"

__all__ = [
    "AllProvidersExhaustedError",
    "AuthenticationError",
    "BatchJob",
    "BatchRequestNotRunError",
    "BudgetExceededError",
    "CapabilityNotFoundError",
    "CapabilityPool",
    "CapabilitySpec",
    "CapabilityTree",
    "CompletionRequest",
    "CompletionResponse",
    "ConfigError",
    "ContentFilterError",
    "ContextLengthError",
    "DiscoverySpec",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FilterSpec",
    "MeshConfig",
    "MiddlewareSpec",
    "Model",
    "ModelInfo",
    "ModelMesh",
    "ModelMeshError",
    "NoActiveModelError",
    "PipelineContext",
    "PipelineRequest",
    "PipelineResult",
    "PipelineStage",
    "PluginError",
    "PluginLoadWarning",
    "Pricing",
    "Provider",
    "ProviderContext",
    "ProviderError",
    "ProviderSpec",
    "ProviderTimeoutError",
    "RateLimitError",
    "Router",
    "RoutingDecision",
    "RoutingError",
    "RoutingOptions",
    "RoutingPipeline",
    "SecretStoreSpec",
    "Services",
    "SinkSpec",
    "StageSpec",
    "StorageSpec",
    "StrategySpec",
    "StreamInterruptedError",
    "Timeouts",
    "ToolCall",
    "create",
    "create_async",
    "hookimpl",
    "hookspec",
    "load_config",
]


def __getattr__(name: str) -> object:
    # Heavier modules (aiohttp sessions, the client) load on first use to keep import cheap.
    if name == "ModelMesh":
        from .mesh import ModelMesh

        return ModelMesh
    if name == "Router":
        from .router import Router

        return Router
    if name in ("MeshConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name in ("create", "create_async"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'modelmesh_core' has no attribute {name!r}")
