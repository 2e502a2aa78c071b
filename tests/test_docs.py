"""Keep docs/ in step with the code.

Conventions enforced here (see each test):

* ``docs/hooks.md`` has one ``## modelmesh_<name>`` section per hookspec in
  :mod:`modelmesh_core.hookspecs`, whose signature line is the code span
  ``modelmesh_<name>(<params>) -> <return annotation>``, and which lists every field of the
  record type the hook returns as `` `field` ``.
* ``docs/config.md`` documents every key of the configuration schema as a Markdown table row
  whose first cell is the key's dotted path in a code span, e.g. ``| `pools.<name>.cooldown` |``.
  Mapping entries are written ``<name>`` and list items ``[]``
  (``plugins.stages[].order``). Every row whose path starts with a top-level section must name a
  real key (or a key of a connector's own ``config:``, which is open-ended).
* ``docs/config.md`` documents every field of every built-in connector's config type as
  `` `…config.<field>` ``.
* ``docs/connectors.md`` names every connector registered by the installed plugins (built-ins
  and entry points), every strategy alias, and the mock provider, each in a code span.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from modelmesh_core import hookspecs
from modelmesh_core import types as mm_types
from modelmesh_core.config import MeshConfig
from modelmesh_core.plugins import PluginRegistry, load_plugins
from modelmesh_core.testing import MOCK_CONNECTOR

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- hooks


def _hookspecs() -> dict[str, Any]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("modelmesh_") and callable(fn)
        and getattr(fn, "modelmesh_spec", None) is not None
    }


def _annotation(value: Any) -> str:
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def _signature(name: str, fn: Any) -> str:
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(p.annotation)}"
        params.append(text)
    ret = ""
    if sig.return_annotation is not inspect.Signature.empty:
        ret = f" -> {_annotation(sig.return_annotation)}"
    return f"{name}({', '.join(params)}){ret}"


def _sections(text: str, pattern: str) -> dict[str, str]:
    """``## heading`` → section body, for headings matching ``pattern``."""
    out: dict[str, str] = {}
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        if re.fullmatch(pattern, heading):
            out[heading] = body
    return out


def _record_type(fn: Any) -> type:
    ann = _annotation(inspect.signature(fn).return_annotation)
    m = re.fullmatch(r"Sequence\[(\w+)\]", ann)
    assert m, f"{fn.__name__}: return annotation {ann!r} is not Sequence[<Record>]"
    record = getattr(mm_types, m.group(1))
    assert attrs.has(record)
    return record


def test_hookspecs_are_found() -> None:
    assert len(_hookspecs()) >= 10


def test_every_hook_has_a_section_and_no_section_is_stale() -> None:
    documented = set(_sections(_read("hooks.md"), r"modelmesh_\w+"))
    assert documented == set(_hookspecs()), (
        f"missing from docs/hooks.md: {sorted(set(_hookspecs()) - documented)}; "
        f"documented but not a hookspec: {sorted(documented - set(_hookspecs()))}"
    )


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hook_signature_line(name: str) -> None:
    body = _sections(_read("hooks.md"), re.escape(name))[name]
    expected = _signature(name, _hookspecs()[name])
    first = next((line.strip() for line in body.splitlines() if line.strip()), "")
    assert first == f"`{expected}`", f"{name}: signature line is {first!r}, expected `{expected}`"


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hook_record_fields_documented(name: str) -> None:
    body = _sections(_read("hooks.md"), re.escape(name))[name]
    record = _record_type(_hookspecs()[name])
    assert f"`{record.__name__}`" in body, f"{name}: section does not name {record.__name__}"
    missing = [a.name for a in attrs.fields(record) if f"`{a.name}`" not in body]
    assert not missing, f"{name}: fields of {record.__name__} not documented: {missing}"


# --------------------------------------------------------------------------- config


def _unwrap(tp: Any) -> Any:
    """Strip ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp


def _walk(cls: type, prefix: str, keys: set[str], nodes: set[str], open_: set[str]) -> None:
    hints = typing.get_type_hints(cls)
    for a in attrs.fields(cls):
        path = f"{prefix}.{a.name}" if prefix else a.name
        keys.add(path)
        tp = _unwrap(hints[a.name])
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            open_.add(path)
        elif attrs.has(tp):
            _walk(tp, path, keys, nodes, open_)
        elif origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
            value = _unwrap(args[1]) if len(args) == 2 else None
            if value is not None and attrs.has(value):
                nodes.add(f"{path}.<name>")
                _walk(value, f"{path}.<name>", keys, nodes, open_)
        elif origin is tuple and args:
            item = _unwrap(args[0])
            if attrs.has(item):
                nodes.add(f"{path}[]")
                _walk(item, f"{path}[]", keys, nodes, open_)


def _schema() -> tuple[set[str], set[str], set[str]]:
    keys: set[str] = set()
    nodes: set[str] = set()
    open_: set[str] = set()
    _walk(MeshConfig, "", keys, nodes, open_)
    return keys, nodes, open_


_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def _documented_keys() -> set[str]:
    sections = {a.name for a in attrs.fields(MeshConfig)}
    return {
        m.group(1)
        for m in _ROW.finditer(_read("config.md"))
        if re.split(r"[.\[]", m.group(1), maxsplit=1)[0] in sections
    }


def test_schema_walk_sees_nested_keys() -> None:
    keys, nodes, open_ = _schema()
    assert "pools.<name>.failure_threshold" in keys
    assert "pools.<name>.retry.backoff" in keys
    assert "plugins.stages[].order" in keys
    assert "proxy.auth.keys[].budget.daily" in keys
    assert "providers.<name>.config" in open_
    assert "pools.<name>" in nodes


def test_every_config_key_documented() -> None:
    keys, _, _ = _schema()
    missing = sorted(keys - _documented_keys())
    assert not missing, f"config keys missing from docs/config.md: {missing}"


def test_no_unknown_config_key_documented() -> None:
    keys, nodes, open_ = _schema()
    unknown = sorted(
        k for k in _documented_keys()
        if k not in keys and k not in nodes
        and not any(k.startswith(o + ".") for o in open_)
    )
    assert not unknown, f"docs/config.md documents keys that do not exist: {unknown}"


# --------------------------------------------------------------------------- connectors


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    pm, report = load_plugins(entry_points=True, strict=False)
    return PluginRegistry.from_manager(pm, report)


_TABLES = ("providers", "strategies", "stages", "filters", "secret_stores", "storage", "sinks",
           "discovery", "middleware", "capabilities")


def test_every_connector_documented(registry: PluginRegistry) -> None:
    text = _read("connectors.md")
    names = {MOCK_CONNECTOR, *registry.strategy_aliases}
    for table in _TABLES:
        names.update(getattr(registry, table))
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"connectors missing from docs/connectors.md: {missing}"


def test_every_connector_config_field_documented(registry: PluginRegistry) -> None:
    text = _read("config.md")
    missing = []
    for table in ("providers", "strategies", "stages", "filters", "secret_stores", "storage",
                  "sinks", "discovery", "middleware"):
        for name, spec in getattr(registry, table).items():
            tp = spec.config_type
            if tp is None or not attrs.has(tp):
                continue
            for a in attrs.fields(tp):
                if not re.search(rf"`[^`\s]*config\.{re.escape(a.name)}`", text):
                    missing.append(f"{name}: {a.name}")
    assert not missing, f"connector config fields missing from docs/config.md: {missing}"
