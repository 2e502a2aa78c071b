"""The ``ModelMesh`` facade and how a mesh is assembled, one room per job.

- :mod:`.facade`: ``ModelMesh`` — lifecycle, reload, accessors, admin controls and status.

``from modelmesh_core.mesh import ModelMesh`` is the public import; the modules inside are
private. Importing this package loads what ``modelmesh_core/mesh.py`` loaded, no more
(``modelmesh_core`` itself imports it lazily).
"""

from __future__ import annotations

from .facade import ModelMesh

__all__ = ["ModelMesh"]
