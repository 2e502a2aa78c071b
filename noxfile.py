"""Nox sessions for ModelMesh (run ``nox -l`` to list them).

* ``tests``            — the core and every plugin package, all tests (what CI runs).
* ``core``             — the core alone, no plugin package installed, its plugin-free tests.
* ``plugin-<name>``    — one session per ``plugins/<name>/`` package: core + that plugin.
* ``lint`` / ``types`` — ruff, mypy.
* ``docs``             — the documentation contract tests (``tests/test_docs.py``).
* ``bench``            — import time, router overhead, proxy overhead (``-- --quick`` to smoke).

Every session installs the project from local paths only (editable), into a fresh venv.
"""

from __future__ import annotations

import re
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("*/") if (p / "pyproject.toml").is_file())

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "types", "core", "tests", "docs"]

# A core test module needs a plugin package when it names one: its import name, a connector
# that a plugin package registers (``"openai.llm.v1"``; collected from the plugins' sources)
# or the ``modelmesh_core.testing.openai_config`` helper. Such modules run in ``tests`` only.
_CONNECTOR = re.compile(r"[\"']([a-z0-9_-]+\.[a-z0-9_-]+\.v\d+)[\"']")


def _plugin_markers() -> re.Pattern[str]:
    names = {"openai_config"}
    for plugin in PLUGINS:
        for source in plugin.glob("*/*.py"):
            if source.parent.name != "tests":
                names.update(_CONNECTOR.findall(source.read_text(encoding="utf-8")))
        names.add(plugin.name.replace("-", "_"))
    return re.compile("|".join(rf"\b{re.escape(n)}\b" for n in sorted(names)))


def install_core(session: nox.Session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


def install_plugins(session: nox.Session) -> None:
    for plugin in PLUGINS:
        session.install("-e", f"{plugin.relative_to(ROOT)}[test]")


def core_test_files() -> list[str]:
    """``tests/test_*.py`` modules that need no plugin package."""
    needs_plugin = _plugin_markers()
    return [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if not needs_plugin.search(path.read_text(encoding="utf-8"))
    ]


@nox.session
def tests(session: nox.Session) -> None:
    """The core and every plugin package, every test."""
    install_core(session)
    install_plugins(session)
    session.run("pytest", *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """The core with no plugin package installed: the tests that need none."""
    install_core(session)
    installed = session.run("python", "-m", "pip", "list", "--format=freeze", silent=True)
    for plugin in PLUGINS:
        if isinstance(installed, str) and f"{plugin.name}==" in installed:
            session.run("python", "-m", "pip", "uninstall", "-y", plugin.name)
    files = core_test_files()
    if not files:
        session.skip("no plugin-free test modules under tests/")
    session.run("pytest", *files, *session.posargs)


def _plugin_session(plugin: Path) -> None:
    @nox.session(name=f"plugin-{plugin.name.removeprefix('modelmesh-')}")
    def plugin_tests(session: nox.Session) -> None:
        install_core(session)
        session.install("-e", f"{plugin.relative_to(ROOT)}[test]")
        session.chdir(plugin)
        session.run("pytest", *session.posargs)

    plugin_tests.__doc__ = f"The {plugin.name} package's tests (core + this plugin only)."


for _plugin in PLUGINS:
    _plugin_session(_plugin)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", *(session.posargs or ["."]))


@nox.session
def types(session: nox.Session) -> None:
    """mypy over the core package."""
    install_core(session)
    session.install("mypy", "types-PyYAML")
    session.run("mypy", *(session.posargs or ["modelmesh_core"]))


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation contract: every hook documented and in step with hookspecs.py."""
    if not (ROOT / "tests" / "test_docs.py").is_file():
        session.skip("tests/test_docs.py does not exist yet")
    install_core(session)
    install_plugins(session)
    session.run("pytest", "tests/test_docs.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: import time, router overhead, proxy overhead. ``-- --quick`` to smoke."""
    install_core(session, "bench")
    install_plugins(session)
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/bench_import.py", *quick)
    session.run("python", "benchmarks/bench_router.py", *session.posargs)
    if (ROOT / "benchmarks" / "bench_proxy.py").is_file():
        session.run("python", "benchmarks/bench_proxy.py", *session.posargs)
    if (ROOT / "benchmarks" / "bench_gemini_chunks.py").is_file():
        session.run("python", "benchmarks/bench_gemini_chunks.py", *quick)
