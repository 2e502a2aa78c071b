"""The library's logger: loguru, disabled for ``modelmesh_core`` until an application (or the
CLI) calls ``logger.enable("modelmesh_core")``.

Every module that logs imports the logger from here, so the disable always happens first and
importing the package itself does not load loguru.
"""

from __future__ import annotations

from loguru import logger

logger.disable("modelmesh_core")

__all__ = ["logger"]
