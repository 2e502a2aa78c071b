"""The ``ModelMesh`` facade and how a mesh is assembled, one room per job.

- :mod:`.facade`: ``ModelMesh`` — lifecycle, reload, accessors, admin controls and status;
- :mod:`.loop_thread`: the private event loop thread behind the synchronous API;
- :mod:`.assembly`: from a configuration source to the runtime (plugins, registry, secret
  store, configuration, then ``Builder``: ledger, strategies, filters, stages, middleware,
  sinks, discovery, pipeline), and strategy state carried over a reload;
- :mod:`.assembly_models`: the builder's provider and model steps;
- :mod:`.assembly_pools`: the builder's pool steps (configured, implicit, direct);
- :mod:`.assembly_base`: what every builder step shares.

``from modelmesh_core.mesh import ModelMesh`` is the public import; the modules inside are
private. Importing this package loads what the single ``mesh.py`` module loaded, no more
(``modelmesh_core`` itself imports it lazily).
"""

from __future__ import annotations

from .facade import ModelMesh

__all__ = ["ModelMesh"]
