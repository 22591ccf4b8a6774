"""The package plan, read by ``noxfile.py`` and checked by ``tests/test_layout.py``.

Packages are listed bottom-up. Each may import only the internal packages named in ``ALLOWED``
(and only their public top level, ``imagen.<name>``), and must declare in its ``pyproject.toml``
every distribution it imports.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ["unets", "diffusion", "text", "cascade", "trainer", "cli"]

ALLOWED: dict[str, set[str]] = {
    "unets": set(),
    "diffusion": set(),
    "text": set(),
    "cascade": {"unets", "diffusion", "text"},
    "trainer": {"cascade", "unets", "diffusion", "text"},
    "cli": {"trainer", "cascade", "unets", "diffusion", "text"},
}

# Public modules below the top level that other packages may import.
PUBLIC_SUBMODULES = {"imagen.diffusion.testing", "imagen.text.testing", "imagen.unets.testing"}

# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {"PIL": "pillow", "ema_pytorch": "ema-pytorch", "yaml": "pyyaml"}


def pyproject(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def normalized(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


def declared(package: str, extra: str | None = None) -> set[str]:
    project = pyproject(package)["project"]
    requirements = project.get("dependencies", [])
    if extra is not None:
        requirements = requirements + project.get("optional-dependencies", {}).get(extra, [])
    return {requirement_name(r) for r in requirements}


def internal_dependencies(package: str) -> set[str]:
    return {d.removeprefix("imagen-") for d in declared(package) if d.startswith("imagen-")}


def internal_closure(package: str) -> list[str]:
    """The package and every internal package it needs, bottom-up."""
    needed, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(internal_dependencies(name))
    return [name for name in PACKAGES if name in needed]


def optional_dependencies(package: str) -> set[str]:
    """The distributions of the package's extras other than ``test`` (e.g. ``imagen-trainer[hf]``)."""
    extras = pyproject(package)["project"].get("optional-dependencies", {})
    return {requirement_name(r) for name, group in extras.items() if name != "test" for r in group}


def imported_modules(path: Path, *, at_import: bool = False) -> set[str]:
    """Absolute module names imported by one Python file (``at_import``: only those imported when
    the module is, i.e. not inside a function)."""
    modules = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = ast.walk(tree)
    if at_import:
        nodes, todo = [], [tree]
        while todo:
            node = todo.pop()
            nodes.append(node)
            todo.extend(c for c in ast.iter_child_nodes(node)
                        if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    for node in nodes:
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


# Random draws with a generator live in one module, so that device placement is right everywhere
# (a CUDA generator must draw on CUDA): any other call of these with a ``generator=`` keyword in
# library code (packages/*/src) is a breach. Allowed: that module, ``testing.py`` modules (test
# oracles and fixtures), and draws without a generator (e.g. nn.Parameter initialisation).
DRAW_HOME = "packages/diffusion/src/imagen/diffusion/draws.py"
DRAW_FUNCTIONS = {
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "normal", "normal_",
    "bernoulli", "bernoulli_", "multinomial", "uniform_", "exponential_", "geometric_", "cauchy_",
    "log_normal_", "random_", "poisson",
}
# Known breaches in packages owned elsewhere, as "path::enclosing function" (each must move to
# imagen.diffusion's draw helpers and leave this list; keyed by function so edits above them keep it).
DRAW_ALLOWED = {
    "packages/unets/src/imagen/unets/core.py::draw_keep_mask",  # TODO(unets): cond-drop mask -> imagen.diffusion.rand
    "packages/trainer/src/imagen/trainer/streams.py::split_validation",  # TODO(trainer): seeded CPU permutation
    "packages/trainer/src/imagen/trainer/data.py::__getitem__",  # TODO(trainer): flip coin
    "packages/trainer/src/imagen/trainer/data.py::__iter__",  # TODO(trainer): epoch permutation
}


def draws_with_generator(path: Path) -> list[tuple[int, str]]:
    """(line, enclosing function name or "") of every call in ``path`` of a torch draw
    (``DRAW_FUNCTIONS``, as a function or a method) with a ``generator=`` keyword."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call) and any(k.arg == "generator" for k in node.keywords):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DRAW_FUNCTIONS:
                found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return sorted(found)


def draw_errors() -> list[str]:
    errors = []
    for path in sorted(ROOT.glob("packages/*/src/**/*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where == DRAW_HOME or path.name == "testing.py":
            continue
        for line, function in draws_with_generator(path):
            if f"{where}::{function}" not in DRAW_ALLOWED:
                errors.append(f"{where}:{line}: draws with a generator outside {DRAW_HOME}; use imagen.diffusion's "
                              "rand/randn/randint/randn_like")
    return errors


def layout_errors() -> list[str]:
    """Every breach of the package plan, as readable lines (empty when all is well)."""
    errors = []
    for init in sorted(ROOT.glob("packages/*/src/imagen/__init__.py")):
        errors.append(f"{init.relative_to(ROOT)} breaks the imagen namespace: remove it")
    for package in PACKAGES:
        internal = internal_dependencies(package)
        if not internal <= ALLOWED[package]:
            errors.append(f"imagen-{package} declares upward dependencies {sorted(internal - ALLOWED[package])}")
        for folder, extra in (("src", None), ("tests", "test")):
            required = declared(package, extra)
            optional = optional_dependencies(package) - required if folder == "src" else set()
            allowed_dists = required | optional
            for path in sorted((ROOT / "packages" / package / folder).rglob("*.py")):
                where = path.relative_to(ROOT)
                reported = set()
                if optional:  # an extra's distribution is imported lazily, inside functions
                    for module in sorted(imported_modules(path, at_import=True)):
                        top = module.split(".")[0]
                        dist = normalized(DISTRIBUTION_OF.get(top, top))
                        if dist in optional and top not in reported:
                            reported.add(top)
                            errors.append(f"{where}: imports {top} (an optional dependency) when it is imported; "
                                          "import it inside the function that needs it")
                for module in sorted(imported_modules(path)):
                    top = module.split(".")[0]
                    if top == "imagen":
                        parts = module.split(".")
                        if len(parts) < 2:
                            errors.append(f"{where}: imports the bare imagen namespace")
                            continue
                        target = parts[1]
                        if target == package:
                            continue
                        if target not in internal:
                            errors.append(f"{where}: imports imagen.{target}, which imagen-{package} does not declare")
                        elif len(parts) > 2 and module not in PUBLIC_SUBMODULES:
                            errors.append(f"{where}: imports the private module {module}")
                    elif top not in sys.stdlib_module_names and not (path.parent / f"{top}.py").exists():
                        dist = normalized(DISTRIBUTION_OF.get(top, top))
                        if dist not in allowed_dists and top not in reported:
                            reported.add(top)
                            errors.append(f"{where}: imports {top}, which imagen-{package} does not declare")
    return errors + draw_errors()


if __name__ == "__main__":
    problems = layout_errors()
    print("\n".join(problems) or "layout ok")
    sys.exit(1 if problems else 0)
