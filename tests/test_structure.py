"""The import structure: a graph without cycles that only points downward, an analysis side that never loads the
training code or JAX, and a command line that starts without the heavy libraries."""

import ast
from pathlib import Path

from .conftest import ROOT


def _module_files() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in ("scaling", "analysis") for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict | None = None) -> set[str]:
    """Modules a file imports, at module level and inside functions. ``from pkg import sub`` of a submodule is an
    edge to ``pkg.sub`` only (the package's own code is not used)."""
    modules = modules if modules is not None else _module_files()
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
    return out


def _module_graph() -> dict[str, set[str]]:
    files = _module_files()
    return {m: {i for i in _imports(p, files) if i in files and i != m} for m, p in files.items()}


def test_the_import_graph_has_no_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_analysis_never_imports_the_training_side_or_jax():
    for p in (ROOT / "analysis").rglob("*.py"):
        bad = {i for i in _imports(p) if i.split(".")[0] in ("scaling", "jax", "flax", "optax", "orbax")}
        assert not bad, (p, bad)


def test_the_command_line_starts_without_the_heavy_libraries():
    """Building the `scaling` parser (every command's --help, and every command before it runs) imports none of
    pandas, scipy, matplotlib, jax, flax, orbax or wandb: they load where a command needs them. Measured: --help
    0.21 s; with pandas pulled in at parser build (analysis.laws importing analysis.runs) it took 0.52-0.56 s."""
    import subprocess
    import sys

    code = ("import sys\nfrom scaling.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'jax', 'flax', 'orbax', 'wandb') if m in sys.modules), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert p.returncode == 0 and p.stderr.strip().splitlines()[-1] == "[]", p.stderr[-2000:]
