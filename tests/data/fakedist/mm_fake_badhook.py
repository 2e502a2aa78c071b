"""A plugin with a misspelled hook: pluggy's check_pending must reject it."""

from modelmesh_core import hookimpl


@hookimpl
def modelmesh_strategiez():
    return []
