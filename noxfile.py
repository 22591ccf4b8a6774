"""Test, lint and layout sessions for the imagen monorepo.

Each package is tested in its own virtual environment that holds only that package, what it
declares, and the internal packages it depends on (installed from their local folders), so an
undeclared import fails. torch is installed first, pinned through ``constraints.txt``, so pip
never resolves an unpinned torch and its CUDA packages; it is unpacked once, into
``build/nox-torch-*``, which every session's environment reads through a ``.pth`` file (its own
requirements go into each environment as usual).

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
from layout import PACKAGES, internal_closure

nox.options.sessions = ["layout", "lint", "tests", "reference"]
# Installs skip byte-compiling (most installed modules are never imported); the modules a session does
# import write their bytecode once. Where PYTHONDONTWRITEBYTECODE=1 is set, every process compiled them
# from source again: the suites that start Python (and torch) dozens of times ran up to twice as long.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
nox.options.default_venv_backend = "venv"

CONSTRAINTS = "constraints.txt"
# One pytest worker per core (pytest-xdist), a test file's tests on one worker (module fixtures); the
# slowest tests are listed (CI time).
PARALLEL = ("-n", "auto", "--dist", "loadfile", "--durations", "10")


TOOLS = ["pytest-xdist", "ruff", "pytest", "hypothesis", "hatchling"]
BUILD = Path(__file__).parent / "build"


def install_pinned(session: nox.Session, *args: str) -> None:
    """pip install under the constraints from the wheelhouse (never the index), building our local
    packages without an isolated build environment and without byte-compiling what it installs (a
    test run imports a small part of transformers, pyarrow or tensorboard)."""
    house = wheelhouse(session)
    options = ["--no-compile", "--no-index", "--find-links", str(house), "-c", CONSTRAINTS]
    if any(arg.startswith("./packages/") for arg in args):
        session.install(*options, "hatchling")
        options.append("--no-build-isolation")
    session.install(*options, *args)


def wheelhouse(session: nox.Session) -> Path:
    """Every third-party wheel a session installs, fetched once into ``build/wheelhouse-<key>`` (the key
    hashes the Python version, the constraints and every package's requirements). Resolving against the registry's index
    took most of a session's set-up (index pages of thousands of files, 9 sessions); resolving against
    this folder takes seconds. torch is left out: ``install_torch`` shares one unpacked copy."""
    spec = [CONSTRAINTS, *(f"packages/{name}/pyproject.toml" for name in PACKAGES)]
    digest = hashlib.sha256(repr((sys.version_info[:2], TOOLS, REFERENCE_PACKAGES)).encode())  # wheels are per Python
    for path in spec:
        digest.update(Path(path).read_bytes())
    house = BUILD / f"wheelhouse-{digest.hexdigest()[:16]}"
    if (house / ".complete").exists():
        return house
    partial = house.with_name(house.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fetch = ["python", "-m", "pip", "wheel", "--quiet", "-c", CONSTRAINTS, "--wheel-dir", str(partial)]
    session.run("python", "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, "hatchling")
    session.run(*fetch, "--no-build-isolation", *(f"./packages/{name}[test]" for name in PACKAGES), *TOOLS)
    session.run(*fetch, "--no-deps", *REFERENCE_PACKAGES)
    ours = [wheel for name in PACKAGES for wheel in partial.glob(f"imagen_{name}-*.whl")]
    for wheel in [*ours, *partial.glob("torch-*.whl")]:
        wheel.unlink()  # our packages are built from their folders in each session; torch is shared
    (partial / ".complete").touch()
    for stale in BUILD.glob("wheelhouse-*"):
        if stale != partial:
            shutil.rmtree(stale)
    partial.rename(house)
    return house


TORCH = "torch==2.13.0"
PYTHON = f"py{sys.version_info[0]}{sys.version_info[1]}"
SHARED_TORCH = BUILD / f"nox-{TORCH.replace('==', '-')}-{PYTHON}"


def install_torch(session: nox.Session) -> None:
    """Makes the pinned torch importable in the session: unpacked once (about 800 MB a copy, the
    slowest part of a session's set-up) and shared read-only through a ``.pth`` file."""
    if not (SHARED_TORCH / ".complete").exists():
        partial = SHARED_TORCH.with_name(SHARED_TORCH.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        session.run("python", "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "--target", str(partial),
                    "-c", CONSTRAINTS, TORCH)
        (partial / ".complete").touch()
        shutil.rmtree(SHARED_TORCH, ignore_errors=True)
        partial.rename(SHARED_TORCH)
    site = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True)
    Path(site.strip(), "_shared_torch.pth").write_text(f"{SHARED_TORCH}\n")


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Installs one package (with its internal dependencies from local folders) and runs its tests."""
    install_torch(session)
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
    install_torch(session)
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    install_pinned(session, "--no-deps", *REFERENCE_PACKAGES)
    install_pinned(session, "pytest-xdist")
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("pytest", *PARALLEL, "reference", *session.posargs)
    if not session.posargs and not os.environ.get("CI"):  # a full local run refreshes the speed table
        session.run("python", "bench/reference_bench.py", "--rounds", "3", "--output", "bench/reference.md")


@nox.session
def faults(session: nox.Session) -> None:
    """Fault injection (not a default session): SIGKILLs aimed inside saves, damaged checkpoint files
    against every loader, full and read-only disks (tmpfs when root). ``nox -s faults -- --long`` runs
    the full counts (>= 50 kills); each suite prints its counts."""
    install_torch(session)
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("pytest", "faults", "-s", *session.posargs)


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing (not a default session) with mutmut of imagen.diffusion, the cascade's
    sampling and the checkpoint container: prints the kill rate per file and per target and the
    mutants not caught (faults/mutation.py; posargs e.g. --target diffusion --max-children 1)."""
    install_torch(session)
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    session.install("--no-compile", "-c", CONSTRAINTS, "mutmut")  # from the index: not in the wheelhouse
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.run("python", "faults/mutation.py", *session.posargs)


@nox.session
def learning(session: nox.Session) -> None:
    """The reduced learning benchmark as a test (not a default session: several CPU-minutes): the
    small-fast recipe trained a fixed number of steps must follow held-out prompts (issue 14)."""
    install_torch(session)
    install_pinned(session, *[f"./packages/{name}[test]" for name in PACKAGES])
    session.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    session.env["IMAGEN_LEARNING"] = "1"
    session.run("pytest", "packages/cli/tests/test_learning.py", "-m", "slow", *session.posargs)
