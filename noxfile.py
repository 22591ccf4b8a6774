"""Test, lint and layout sessions for the imagen monorepo.

Each package is tested in its own virtual environment that holds only that package, what it
declares, and the internal packages it depends on (installed from their local folders), so an
undeclared import fails. Environments are made and filled by uv from one local wheelhouse, never
from an index, so nothing resolves an unpinned torch and its CUDA packages.

    nox                                  # every session
    nox -s "tests(package='diffusion')"  # one package
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent / "tools"))
from layout import PACKAGES, internal_closure, pyproject, requirement_name

nox.options.sessions = ["layout", "lint", "tests", "reference"]
# Installs skip byte-compiling (most installed modules are never imported); the modules a session does
# import write their bytecode once. Where PYTHONDONTWRITEBYTECODE=1 is set, every process compiled them
# from source again: the suites that start Python (and torch) dozens of times ran up to twice as long.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# uv fills an environment from its cache by hard links (seconds, torch included); pip took 10-35 s a session.
nox.options.default_venv_backend = "uv"

CONSTRAINTS = "constraints.txt"
# One pytest worker per core (pytest-xdist), a test file's tests on one worker (module fixtures); the
# slowest tests are listed (CI time).
PARALLEL = ("-n", "auto", "--dist", "loadfile", "--durations", "10")


TOOLS = ["pytest-xdist", "ruff", "pytest", "hypothesis", "hatchling", "mutmut"]
BUILD = Path(__file__).parent / "build"


def install_pinned(session: nox.Session, *args: str) -> None:
    """Installs under the constraints from the wheelhouse only (``--no-index``), building our local
    packages without an isolated build environment."""
    options = ["--no-index", "--find-links", str(wheelhouse(session)), "-c", CONSTRAINTS]
    if any(arg.startswith("./packages/") for arg in args):
        session.install(*options, "hatchling")
        options.append("--no-build-isolation")
    session.install(*options, *args)


def third_party_requirements() -> list[str]:
    """What our packages and their tests require from outside the monorepo."""
    requirements = []
    for name in PACKAGES:
        project = pyproject(name)["project"]
        for requirement in [*project.get("dependencies", []), *project.get("optional-dependencies", {})["test"]]:
            if not requirement_name(requirement).startswith("imagen-"):
                requirements.append(requirement)
    return sorted(set(requirements))


def wheelhouse(session: nox.Session) -> Path:
    """Every wheel a session installs, fetched once into ``build/wheelhouse-<key>`` by the pip that runs
    nox (it reads the machine's registry settings; the key hashes the Python version, the constraints and
    every package's requirements). uv then installs from this folder alone."""
    spec = [CONSTRAINTS, *(f"packages/{name}/pyproject.toml" for name in PACKAGES)]
    digest = hashlib.sha256(repr((sys.version_info[:2], TOOLS, REFERENCE_PACKAGES)).encode())  # wheels are per Python
    for path in spec:
        digest.update(Path(path).read_bytes())
    house = BUILD / f"wheelhouse-{digest.hexdigest()[:16]}"
    if (house / ".complete").exists():
        return house
    partial = house.with_name(house.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fetch = [sys.executable, "-m", "pip", "wheel", "--quiet", "-c", CONSTRAINTS, "--wheel-dir", str(partial)]
    session.run(*fetch, *third_party_requirements(), *TOOLS, external=True)
    session.run(*fetch, "--no-deps", *REFERENCE_PACKAGES, external=True)
    (partial / ".complete").touch()
    for stale in BUILD.glob("wheelhouse-*"):
        if stale != partial:
            shutil.rmtree(stale)
    partial.rename(house)
    return house


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Installs one package (with its internal dependencies from local folders) and runs its tests."""
    local = [f"./packages/{name}" for name in internal_closure(package) if name != package]
    install_pinned(session, *local, f"./packages/{package}[test]", "pytest-xdist")
    # Tiny test models run fastest on one thread per process (and never oversubscribe the cores).
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("pytest", *PARALLEL, f"packages/{package}/tests", *session.posargs)


@nox.session
def layout(session: nox.Session) -> None:
    """Checks that dependencies point only downward and that no imagen/__init__.py exists."""
    install_pinned(session, "pytest", "hypothesis")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Runs ruff over the whole tree."""
    install_pinned(session, "ruff")
    session.run("ruff", "check", ".")


# imagen-pytorch 2.1.0 and the requirements it imports, each pinned in constraints.txt. They go in
# with --no-deps: the reference declares torchvision (a CUDA build on the registry, which does not
# import with the CPU torch) and datasets; reference/standins/ replaces the little of them it uses.
REFERENCE_PACKAGES = [
    "imagen-pytorch", "kornia", "kornia_rs", "beartype", "pytorch-warmup", "fsspec", "pydantic",
    "pydantic_core", "annotated-types", "typing-inspection", "click", "packaging",
]


@nox.session
def reference(session: nox.Session) -> None:
    """Checks that our packages compute what imagen-pytorch 2.1.0 computes with the same weights."""
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES], "pytest-xdist")
    install_pinned(session, "--no-deps", *REFERENCE_PACKAGES)
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("pytest", *PARALLEL, "reference", *session.posargs)
    if not session.posargs and not os.environ.get("CI"):  # a full local run refreshes the speed table
        session.run("python", "bench/reference_bench.py", "--rounds", "3", "--output", "bench/reference.md")


@nox.session
def faults(session: nox.Session) -> None:
    """Fault injection (not a default session): SIGKILLs aimed inside saves, damaged checkpoint files
    against every loader, full and read-only disks (tmpfs when root). ``nox -s faults -- --long`` runs
    the full counts (>= 50 kills); each suite prints its counts."""
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("pytest", "faults", "-s", *session.posargs)


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing (not a default session) with mutmut of imagen.diffusion, the cascade's
    sampling and the checkpoint container: prints the kill rate per file and per target and the
    mutants not caught (faults/mutation.py; posargs e.g. --target diffusion --max-children 1)."""
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES], "mutmut")
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("python", "faults/mutation.py", *session.posargs)


@nox.session
def learning(session: nox.Session) -> None:
    """The reduced learning benchmark as a test (not a default session: several CPU-minutes): the
    small-fast recipe trained a fixed number of steps must follow held-out prompts (issue 14)."""
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.env["IMAGEN_LEARNING"] = "1"
    session.run("pytest", "packages/cli/tests/test_learning.py", "-m", "slow", *session.posargs)
