"""Reproducible installs: ``uv.lock`` agrees with ``pyproject.toml``, and the environment is the locked one.

``scripts/setup.sh`` installs with ``uv sync --frozen``, which refuses nothing and resolves nothing: it installs the
lock as written. These tests catch the two ways that can go wrong: a ``pyproject.toml`` edited without re-locking
(``.venv/bin/uv lock`` fixes it), and an environment that was not made by setup.sh.
"""

import importlib.metadata
import tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import ROOT


def _lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _as_lock_entries(reqs: list[str], extra: str | None = None) -> set[tuple]:
    out = set()
    for s in reqs:
        r = Requirement(s)
        marker = f"extra == '{extra}'" if extra else None
        out.add((r.name, tuple(sorted(r.extras)), str(r.specifier) or None, marker))
    return out


def test_lock_matches_pyproject():
    """What the lock was resolved for is exactly what pyproject.toml asks for (the check `uv lock --check` does)."""
    project = _pyproject()
    root = next(p for p in _lock()["package"] if p.get("source", {}).get("editable") == ".")
    assert root["name"] == project["project"]["name"]
    want = _as_lock_entries(project["project"]["dependencies"])
    for extra, reqs in project["project"]["optional-dependencies"].items():
        want |= _as_lock_entries(reqs, extra)
    meta = root["metadata"]
    have = {(r["name"], tuple(sorted(r.get("extras", []))), r.get("specifier"), r.get("marker")) for r in meta["requires-dist"]}
    assert have == want, "uv.lock is stale: run `.venv/bin/uv lock` and commit uv.lock"
    assert sorted(meta["provides-extras"]) == sorted(project["project"]["optional-dependencies"])
    groups = {g: _as_lock_entries(reqs) for g, reqs in project.get("dependency-groups", {}).items()}
    locked_groups = {
        g: {(r["name"], tuple(sorted(r.get("extras", []))), r.get("specifier"), None) for r in reqs}
        for g, reqs in meta.get("requires-dev", {}).items()
    }
    assert locked_groups == groups


def _applies_here(pkg: dict) -> bool:
    markers = pkg.get("resolution-markers")
    return not markers or any(Marker(m).evaluate() for m in markers)


def _marker_ok(dep: dict) -> bool:
    m = dep.get("marker")
    return m is None or Marker(m).evaluate({"extra": ""})


def _installed_closure(extras: tuple[str, ...] = ("test",), groups: tuple[str, ...] = ("dev",)) -> dict[str, set[Version]]:
    """Locked versions of every distribution `uv sync --extra test` installs here: the dependency closure of the
    project with its test extra and dev group, markers evaluated for this interpreter and platform."""
    entries: dict[str, list[dict]] = {}
    for pkg in _lock()["package"]:
        if _applies_here(pkg):
            entries.setdefault(pkg["name"], []).append(pkg)
    root = next(p for p in _lock()["package"] if p.get("source", {}).get("editable") == ".")
    todo = [(d["name"], tuple(d.get("extra", []))) for d in root.get("dependencies", []) if _marker_ok(d)]
    for e in extras:
        todo += [(d["name"], tuple(d.get("extra", []))) for d in root.get("optional-dependencies", {}).get(e, []) if _marker_ok(d)]
    for g in groups:
        todo += [(d["name"], tuple(d.get("extra", []))) for d in root.get("dev-dependencies", {}).get(g, []) if _marker_ok(d)]
    out: dict[str, set[Version]] = {}
    seen = set()
    while todo:
        name, want_extras = todo.pop()
        if (name, want_extras) in seen:
            continue
        seen.add((name, want_extras))
        for pkg in entries.get(name, []):
            out.setdefault(name, set()).add(Version(pkg["version"]))
            deps = list(pkg.get("dependencies", []))
            for e in want_extras:
                deps += pkg.get("optional-dependencies", {}).get(e, [])
            todo += [(d["name"], tuple(d.get("extra", []))) for d in deps if _marker_ok(d)]
    return out


def test_installed_versions_are_the_locked_ones():
    """Every distribution setup.sh installs is present here at the locked version for this interpreter/platform."""
    locked = _installed_closure()
    for core in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "pandas", "wandb", "pytest", "uv"):
        assert core in locked, core
    problems = []
    for name, versions in sorted(locked.items()):
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} missing")
            continue
        if installed not in versions:
            problems.append(f"{name} {installed} (lock: {', '.join(map(str, sorted(versions)))})")
    assert not problems, "environment differs from uv.lock (run ./scripts/setup.sh): " + "; ".join(problems)
