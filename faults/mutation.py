"""Mutation testing with mutmut (``nox -s mutation``, not a default session): the kill rate per file
and per target, and the surviving mutants.

    python faults/mutation.py [--target diffusion|cascade-sampling|container ...] [--files a.py ...]
                              [--max-children N] [--resume] [--note]

Targets (default: all three, one after the other; on 2 shared cores the diffusion target takes
about an hour with ``--max-children 2``, cascade-sampling many hours: see faults/mutation.md):

- ``diffusion``: ``imagen.diffusion``'s modules (schedules, samplers, guidance, denoisers, EDM, VP
  sampling, the Gaussian process, inpainting, draws, checks; not the ``testing`` oracles) against
  the diffusion test suite;
- ``cascade-sampling``: ``imagen.cascade.sampling`` (the per-stage plan and the sampling loop)
  against the cascade's sampling (and sampling parts), refinement and schedule tests;
- ``container``: ``imagen.cascade.container`` (the checkpoint container) against the container and
  trainer checkpoint tests (without the SIGKILL loop).

mutmut derives module names from paths under ``./`` or ``src/``, and our packages live under
``packages/<name>/src``, so each target stages a copy in ``build/mutation/<target>``: the whole
package under ``src/imagen/<package>`` (only the files in its ``mutate`` list are mutated), its
tests, the root ``conftest.py`` (test device, hypothesis profiles) and the package's conftest.
mutmut's mutated tree is put first on ``sys.path``, so ``imagen.<package>`` (a package inside the
``imagen`` namespace) comes from it and the other, editable-installed packages use it too.

Two adjustments of the staged copy, neither a change of behaviour:

- mutmut never mutates a decorated function (other than static and class methods), and our samplers
  and ``sample`` are ``@torch.no_grad()``: the staged copy drops such a decorator line and applies
  the same decorator after the module instead (``name = torch.no_grad()(name)``, or on the class
  attribute for a method), so those functions are mutated too;
- hypothesis runs derandomized (a ``mutation`` profile, no example database), so a mutant is judged
  on the same examples as the clean run.

``--files`` mutates only the named files of one target (to measure, or to check a new test).
``--resume`` keeps an earlier run's staged copy and results (mutmut skips mutants it has judged).
``--rerun-uncaught`` keeps them too, but copies the current tests in, lets mutmut map tests to
functions afresh and judges again only the mutants the earlier run did not catch (the figures
after new tests, in minutes rather than a full run; tests are only added, so a caught mutant stays
caught).
``--note`` rewrites this target's section of ``faults/mutation.md`` from the results.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "build" / "mutation"
NOTE = ROOT / "faults" / "mutation.md"

# the statuses counted as caught; every other one (survived, no tests, suspicious, ...) is listed,
# except NOT_RUN (an interrupted run's mutants not yet judged: counted apart, outside the rate)
CAUGHT = ("killed", "timeout")
NOT_RUN = "not checked"
# decorators that only wrap the function (applied after the module in the staged copy)
WRAPPERS = ("torch.no_grad()", "contextlib.contextmanager")


@dataclass(frozen=True)
class Target:
    """One package's files to mutate and the fast tests that should kill their mutants."""

    name: str
    package: str  # packages/<package>/src/imagen/<package>
    mutate: tuple[str, ...]
    tests: tuple[str, ...]  # paths from the repository root, staged flat under tests/
    deselect: str = ""  # a pytest -k expression of tests left out (slow loops)


TARGETS = {
    target.name: target
    for target in (
        Target(
            "diffusion", "diffusion",
            mutate=("schedules.py", "samplers.py", "guidance.py", "denoisers.py", "edm.py", "vp_sampling.py",
                    "gaussian.py", "inpainting.py", "draws.py", "_checks.py"),
            tests=tuple(sorted(str(path.relative_to(ROOT))
                               for path in (ROOT / "packages/diffusion/tests").glob("test_*.py"))),
        ),
        Target(
            "cascade-sampling", "cascade",
            mutate=("sampling.py",),
            tests=tuple(f"packages/cascade/tests/{name}.py" for name in (
                "test_sampling", "test_sampling_parts", "test_sampling_wiring", "test_refine", "test_schedules",
                "test_input_checks", "test_reference_defaults", "test_errors", "test_device", "test_bf16",
                "test_readme_examples", "test_crops", "cascade_testing")),
        ),
        Target(
            "container", "cascade",
            mutate=("container.py",),
            tests=("packages/cascade/tests/test_container.py", "packages/cascade/tests/cascade_testing.py",
                   "packages/trainer/tests/test_checkpoints.py"),
            deselect="not sigkill",
        ),
    )
}

HYPOTHESIS_PROFILE = '''

# --- staged by faults/mutation.py: judge every mutant on the clean run's examples ---
settings.register_profile("mutation", max_examples=20, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mutation")
'''
PATH_CONFTEST = '''"""The staged tests' helpers on the path (mutation testing only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
'''


def pyproject(target: Target, files: tuple[str, ...]) -> str:
    """The staged copy's mutmut and pytest settings."""
    source = f"src/imagen/{target.package}"
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-x", "-q", "-m", "not slow"]
    if target.deselect:
        args += ["-k", target.deselect]
    return f'''[tool.mutmut]
source_paths = ["{source}"]
only_mutate = {_toml_list(f"{source}/{name}" for name in files)}
pytest_add_cli_args_test_selection = ["tests"]
pytest_add_cli_args = {_toml_list(args)}
also_copy = ["tests", "conftest.py"]
process_isolation = "fork"

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
markers = ["slow: long checks", "cpu_only: CPU by nature"]
'''


def _toml_list(items) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def move_wrapping_decorators(source: str) -> str:
    """``source`` with each ``@torch.no_grad()`` (and other ``WRAPPERS``) decorator removed and the same
    decorator applied after the definition, so mutmut mutates the function (same behaviour): a
    module-level function is rebound right after its body, a method at the end of the module."""
    tree = ast.parse(source)
    drop: set[int] = set()  # 1-based line numbers of the decorators removed
    insert_after: dict[int, list[str]] = {}
    at_end: list[str] = []

    def visit(body, owner: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{owner}{node.name}.")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.decorator_list) != 1:
                continue
            decorator = node.decorator_list[0]
            text = ast.unparse(decorator)
            if text not in WRAPPERS:
                continue
            drop.update(range(decorator.lineno, decorator.end_lineno + 1))
            name = owner + node.name
            if owner:
                at_end.append(f"{name} = {text}({name})")
            else:
                insert_after.setdefault(node.end_lineno, []).append(f"{name} = {text}({name})")

    visit(tree.body, "")
    if not drop:
        return source
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number not in drop:
            lines.append(line)
        lines += insert_after.get(number, [])
    if at_end:
        lines += ["", "", "# moved here by faults/mutation.py (mutmut skips decorated functions)", *at_end]
    return "\n".join(lines) + "\n"


def stage(target: Target, files: tuple[str, ...]) -> Path:
    """A fresh staged copy of ``target``'s package and tests; returns its folder."""
    folder = STAGES / target.name
    shutil.rmtree(folder, ignore_errors=True)
    package = folder / "src" / "imagen" / target.package
    package.parent.mkdir(parents=True)
    shutil.copytree(ROOT / f"packages/{target.package}/src/imagen/{target.package}", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in files:
        module = package / name
        module.write_text(move_wrapping_decorators(module.read_text()))
    stage_tests(target, folder)
    (folder / "pyproject.toml").write_text(pyproject(target, files))
    return folder


def stale_files(target: Target, folder: Path, files: tuple[str, ...]) -> list[str]:
    """The mutated files whose staged copy no longer matches the tree's source."""
    source = ROOT / f"packages/{target.package}/src/imagen/{target.package}"
    staged = folder / "src" / "imagen" / target.package
    return [name for name in files
            if (staged / name).read_text() != move_wrapping_decorators((source / name).read_text())]


def stage_tests(target: Target, folder: Path) -> None:
    """Copy ``target``'s tests and conftests (fresh) into the staged ``folder``."""
    tests = folder / "tests"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir()
    for path in target.tests:
        shutil.copy2(ROOT / path, tests / Path(path).name)
    package_conftest = ROOT / f"packages/{target.package}/tests/conftest.py"
    (tests / "conftest.py").write_text(PATH_CONFTEST + "\n" + package_conftest.read_text())
    (folder / "conftest.py").write_text((ROOT / "conftest.py").read_text() + HYPOTHESIS_PROFILE)


@dataclass
class Results:
    """mutmut's verdicts for one target: counts per file and the mutants not caught, with diffs."""

    target: str
    counts: dict[str, Counter]
    uncaught: dict[str, list[str]]  # file -> "name: status: diff"
    names: list[str]  # mutmut's names of the uncaught mutants

    def table(self) -> list[str]:
        rows = ["| file | mutants | killed | timeout | not caught | not run | kill rate |",
                "|---|---|---|---|---|---|---|"]
        total = Counter()
        for module, counts in sorted(self.counts.items()):
            total.update(counts)
            rows.append(_row(f"{module}.py", counts))
        rows.append(_row(f"**{self.target}**", total))
        return rows

    def rate(self) -> float:
        total = Counter()
        for counts in self.counts.values():
            total.update(counts)
        return _rate(total)


def _rate(counts: Counter) -> float:
    """Caught / judged, in percent (mutants not run are left out)."""
    return 100 * sum(counts[s] for s in CAUGHT) / max(sum(counts.values()) - counts[NOT_RUN], 1)


def _row(label: str, counts: Counter) -> str:
    total = sum(counts.values())
    uncaught = total - sum(counts[s] for s in CAUGHT) - counts[NOT_RUN]
    return (f"| {label} | {total} | {counts['killed']} | {counts['timeout']} | {uncaught} | {counts[NOT_RUN]} | "
            f"{_rate(counts):.1f}% |")


def _mutmut() -> list[str]:
    return [sys.executable, "-m", "mutmut"] if shutil.which("mutmut") is None else ["mutmut"]


def mutant_diffs(folder: Path, package: str) -> dict[str, str]:
    """Each mutant's change as ``- old + new`` on one line, keyed by its function name (e.g.
    ``x_karras_sigmas__mutmut_3``), read from mutmut's mutated modules: it writes each mutant as a
    copy of the function next to the unmutated ``..._mutmut_orig``."""
    diffs = {}
    for module in (folder / "mutants" / "src" / "imagen" / package).glob("*.py"):
        source = module.read_text()
        lines = source.splitlines()
        functions = {node.name: [lines[node.lineno - 1].replace(node.name, "f", 1), *lines[node.lineno:node.end_lineno]]
                     for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name}
        for name, body in functions.items():
            original = functions.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
            if original is None or name.endswith("__mutmut_orig"):
                continue
            changed = [line for line in difflib.unified_diff(original, body, lineterm="", n=0)
                       if line[:1] in "+-" and not line.startswith(("+++", "---"))]
            diffs[name] = " ".join(f"{line[0]} {line[1:].strip()}" for line in changed)
    return diffs


def collect(target: Target, folder: Path) -> Results:
    """Parse ``mutmut results --all true`` of a staged run."""
    shown = subprocess.run([*_mutmut(), "results", "--all", "true"], cwd=folder, capture_output=True, text=True)
    counts: dict[str, Counter] = {}
    uncaught: dict[str, list[str]] = {}
    names = []
    prefix = re.escape(f"imagen.{target.package}.")
    diffs = mutant_diffs(folder, target.package)
    for line in shown.stdout.splitlines():
        match = re.match(rf"\s*({prefix}(\w+)\.\S+): (.+)$", line)
        if not match:
            continue
        name, module, status = match.group(1), match.group(2), match.group(3).strip()
        counts.setdefault(module, Counter())[status] += 1
        if status not in (*CAUGHT, NOT_RUN):
            names.append(name)
            short = name.split(".")[-1].removeprefix("x_").replace("ǁ", ".").strip(".")
            uncaught.setdefault(module, []).append(f"{short}: {status}: {diffs.get(name.split('.')[-1], '?')}")
    if not counts:
        print(shown.stdout[-3000:], shown.stderr[-3000:])
        raise SystemExit(f"mutmut produced no results for {target.name}")
    return Results(target.name, counts, uncaught, names)


def report(results: Results) -> str:
    """The table and the uncaught mutants grouped by file, as markdown."""
    lines = [*results.table(), ""]
    for module, mutants in sorted(results.uncaught.items()):
        lines += [f"`{module}.py` ({len(mutants)} not caught):", "", "```", *mutants, "```", ""]
    return "\n".join(lines)


def write_note(results: Results, text: str) -> None:
    """Replace the target's generated section of ``faults/mutation.md`` (between its markers)."""
    begin, end = f"<!-- results:{results.target} -->", f"<!-- /results:{results.target} -->"
    note = NOTE.read_text() if NOTE.exists() else "# Mutation testing (mutmut)\n"
    section = f"{begin}\n{text}\n{end}"
    if begin in note and end in note:
        note = note[:note.index(begin)] + section + note[note.index(end) + len(end):]
    else:
        note = note.rstrip("\n") + f"\n\n## {results.target}\n\n{section}\n"
    temporary = NOTE.with_name(NOTE.name + ".partial")
    temporary.write_text(note)
    temporary.replace(NOTE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="a target to run (repeatable; default: all)")
    parser.add_argument("--files", nargs="+", help="mutate only these files of the one --target")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="keep the staged copy and its earlier results")
    parser.add_argument("--rerun-uncaught", action="store_true",
                        help="with the current tests, judge again the mutants an earlier run did not catch")
    parser.add_argument("--note", action="store_true", help="rewrite the target's section of faults/mutation.md")
    args = parser.parse_args()
    names = args.target or list(TARGETS)
    if args.files and len(names) != 1:
        parser.error("--files needs exactly one --target")
    summary = []
    for name in names:
        target = TARGETS[name]
        files = tuple(args.files or target.mutate)
        unknown = sorted(set(files) - set(target.mutate))
        if unknown:
            parser.error(f"--files {unknown} are not in target {name}'s files {list(target.mutate)}")
        folder = STAGES / name
        again: list[str] = []
        if args.rerun_uncaught and (folder / "mutants").exists():
            stale = stale_files(target, folder, files)
            if stale:
                parser.error(f"the staged copy of {stale} differs from the tree: --rerun-uncaught would judge "
                             "the current tests against the old source; run the target afresh (no --rerun-uncaught)")
            again = collect(target, folder).names
            stage_tests(target, folder)
            (folder / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # new tests: map them again
        elif not (args.resume and (folder / "mutants").exists()):
            stage(target, files)
        if again or not args.rerun_uncaught:
            subprocess.run([*_mutmut(), "run", "--max-children", str(args.max_children), *again],
                           cwd=folder, check=False)
        results = collect(target, folder)
        text = report(results)
        print(f"\n## {name}\n\n{text}")
        (folder / "report.md").write_text(text + "\n")
        if args.note:
            write_note(results, text)
        summary.append(f"{name}: {results.rate():.1f}% killed")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
