"""Import-time benchmark for ``modelmesh_core``, each sample in a fresh interpreter.

* wall clock of ``python -c "import modelmesh_core"`` minus that of ``python -c "pass"``
  (interpreter start-up), median of ``--runs``;
* ``python -X importtime``: the cumulative import time of ``modelmesh_core`` itself and the
  slowest modules it pulls in (median over the runs);
* the cost of the lazy attribute ``modelmesh_core.ModelMesh`` (which imports the mesh and
  aiohttp's client) on top of the plain import;
* which heavy modules a plain ``import modelmesh_core`` loads: it must not load aiohttp's
  client session, run plugin discovery (``importlib.metadata`` entry points, plugin packages)
  or import the ``openai`` SDK.

Run ``python benchmarks/bench_import.py`` (``--json`` for machine-readable output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

# Modules the bare package import must not load, with why they matter.
FORBIDDEN = {
    "aiohttp.client": "aiohttp's client session",
    "aiohttp.connector": "aiohttp's connection pool",
    "openai": "the openai SDK",
    "modelmesh_openai": "a plugin package (discovery ran)",
    "modelmesh_core.mesh": "the ModelMesh facade (should be lazy)",
    "modelmesh_core.plugins": "plugin discovery",
    "importlib.metadata": "entry-point discovery",
}
# Heavy-but-allowed modules whose presence is worth reporting.
NOTABLE = ("aiohttp", "aiohttp.web", "pluggy", "yaml", "cattrs", "attrs", "orjson", "loguru",
           "multidict", "yarl", "asyncio", "ssl", "email")

_PROBE = """
import sys, json
import modelmesh_core
before = set(sys.modules)
{extra}
print(json.dumps(sorted(before)))
"""


def _wall(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - t) * 1000.0


def _importtime(code: str) -> dict[str, tuple[int, int]]:
    """``{module: (self µs, cumulative µs)}`` from ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True, capture_output=True, text=True,
    )
    out: dict[str, tuple[int, int]] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        try:
            own, cumulative = int(parts[0]), int(parts[1])
        except ValueError:
            continue  # the header line
        out[parts[2].strip()] = (own, cumulative)
    return out


def run(runs: int, top: int) -> dict[str, Any]:
    """Measure; see the module docstring."""
    walls: dict[str, list[float]] = {"python": [], "import": [], "import+ModelMesh": []}
    codes = {
        "python": "pass",
        "import": "import modelmesh_core",
        "import+ModelMesh": "import modelmesh_core; modelmesh_core.ModelMesh",
    }
    _wall(codes["import"])  # warm the file-system cache and the .pyc files
    for _ in range(runs):
        for name, code in codes.items():  # interleaved, like the router benchmark
            walls[name].append(_wall(code))
    medians = {name: statistics.median(v) for name, v in walls.items()}

    samples = [_importtime("import modelmesh_core") for _ in range(runs)]
    modules = set().union(*samples)
    cumulative = {
        m: statistics.median(s[m][1] for s in samples if m in s) for m in modules
    }
    own = {m: statistics.median(s[m][0] for s in samples if m in s) for m in modules}
    lazy = [_importtime("import modelmesh_core; modelmesh_core.ModelMesh") for _ in range(runs)]
    lazy_total = statistics.median(
        sum(c for name, (_, c) in s.items() if name == "modelmesh_core.mesh") for s in lazy
    )

    loaded = set(json.loads(subprocess.run(
        [sys.executable, "-c", _PROBE.format(extra="")],
        check=True, capture_output=True, text=True,
    ).stdout))
    forbidden = {m: why for m, why in FORBIDDEN.items() if m in loaded}
    return {
        "runs": runs,
        "interpreter_ms": medians["python"],
        "import_wall_ms": medians["import"] - medians["python"],
        "import_plus_modelmesh_wall_ms": medians["import+ModelMesh"] - medians["python"],
        "lazy_modelmesh_wall_ms": medians["import+ModelMesh"] - medians["import"],
        "importtime_modelmesh_core_ms": cumulative.get("modelmesh_core", 0) / 1000.0,
        "importtime_mesh_module_ms": lazy_total / 1000.0,
        "slowest_self_ms": [
            (m, own[m] / 1000.0) for m in sorted(own, key=own.__getitem__, reverse=True)[:top]
        ],
        "modules_loaded": len(loaded),
        "notable_loaded": [m for m in NOTABLE if m in loaded],
        "forbidden_loaded": forbidden,
    }


def render(res: dict[str, Any]) -> str:
    """A plain-text report."""
    lines = [
        f"modelmesh_core import time — fresh interpreter, median of {res['runs']} runs",
        f"  interpreter start-up (python -c pass)          {res['interpreter_ms']:8.1f} ms",
        f"  import modelmesh_core (wall, minus start-up)   {res['import_wall_ms']:8.1f} ms",
        f"  -X importtime cumulative for modelmesh_core    "
        f"{res['importtime_modelmesh_core_ms']:8.1f} ms",
        f"  + modelmesh_core.ModelMesh (lazy, wall)        "
        f"{res['lazy_modelmesh_wall_ms']:8.1f} ms",
        f"  -X importtime of modelmesh_core.mesh           "
        f"{res['importtime_mesh_module_ms']:8.1f} ms",
        f"  modules in sys.modules after the import        {res['modules_loaded']:8d}",
        f"  heavy modules loaded (allowed): {', '.join(res['notable_loaded']) or 'none'}",
        "  slowest modules (self time):",
    ]
    for name, ms in res["slowest_self_ms"]:
        lines.append(f"    {ms:7.2f} ms  {name}")
    forbidden = res["forbidden_loaded"]
    if forbidden:
        lines.append("  FORBIDDEN modules loaded by the plain import:")
        for name, why in forbidden.items():
            lines.append(f"    {name}  ({why})")
    else:
        lines.append(
            "  not loaded (as required): " + ", ".join(FORBIDDEN)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exits 1 when a forbidden module is imported."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh interpreters per variant")
    parser.add_argument("--top", type=int, default=8, help="slowest modules to list")
    parser.add_argument("--quick", action="store_true", help="3 runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    res = run(3 if args.quick else args.runs, args.top)
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 1 if res["forbidden_loaded"] else 0


if __name__ == "__main__":
    sys.exit(main())
