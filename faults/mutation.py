"""Mutation testing of the checkpoint container code with mutmut (``nox -s mutation``).

    python faults/mutation.py [--max-children N]

mutmut derives module names from paths under ``./`` or ``src/``, and our packages live under
``packages/<name>/src``, so this stages a copy: ``build/mutation/src/imagen/cascade`` (the whole
package; only the files in ``MUTATE`` are mutated) and the tests that exercise them. mutmut's
mutated tree is put first on ``sys.path``, so ``imagen.cascade`` (a package inside the ``imagen``
namespace) comes from it, and ``imagen.trainer`` (installed editable) uses it too. Prints the
kill rate per file and the surviving mutants.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
MUTATE = ["container.py"]
TESTS = [
    ("packages/cascade/tests/test_container.py", "test_container.py"),
    ("packages/cascade/tests/cascade_testing.py", "cascade_testing.py"),
    ("packages/trainer/tests/test_checkpoints.py", "test_checkpoints.py"),
]
CONFTEST = '''"""The staged tests' helpers on the path (mutation testing only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
'''
PYPROJECT = f'''[tool.mutmut]
source_paths = ["src/imagen/cascade"]
only_mutate = {[f"src/imagen/cascade/{name}" for name in MUTATE]!r}
pytest_add_cli_args_test_selection = ["tests"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q", "-k", "not sigkill"]
also_copy = ["tests"]
process_isolation = "fork"

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
'''


def stage() -> None:
    shutil.rmtree(STAGE, ignore_errors=True)
    (STAGE / "src" / "imagen").mkdir(parents=True)
    shutil.copytree(ROOT / "packages/cascade/src/imagen/cascade", STAGE / "src/imagen/cascade",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (STAGE / "tests").mkdir()
    for source, target in TESTS:
        shutil.copy2(ROOT / source, STAGE / "tests" / target)
    (STAGE / "tests" / "conftest.py").write_text(CONFTEST)
    (STAGE / "pyproject.toml").write_text(PYPROJECT.replace("'", '"'))


def summarise(results: str) -> tuple[str, bool]:
    """The kill rate per mutated file and the surviving mutants, from ``mutmut results --all true``."""
    per_file: dict[str, Counter] = {}
    survivors = []
    for line in results.splitlines():
        match = re.match(r"\s*(imagen\.cascade\.(\w+)\.\S+): (.+)$", line)
        if not match:
            continue
        name, module, status = match.group(1), match.group(2), match.group(3).strip()
        per_file.setdefault(module, Counter())[status] += 1
        if status in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append(f"{name}: {status}")
    lines = []
    for module, counts in sorted(per_file.items()):
        total = sum(counts.values())
        killed = counts["killed"]
        lines.append(f"{module}.py: {killed}/{total} mutants killed ({100 * killed / max(total, 1):.1f}%) "
                     f"{dict(counts)}")
    return "\n".join([*lines, "surviving:", *survivors]), bool(per_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    stage()
    mutmut = [sys.executable, "-m", "mutmut"] if shutil.which("mutmut") is None else ["mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=STAGE, check=False)
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=STAGE, capture_output=True, text=True)
    report, ok = summarise(results.stdout)
    print(report)
    (STAGE / "report.txt").write_text(report + "\n")
    if not ok:
        print(results.stdout[-3000:], results.stderr[-3000:])
        raise SystemExit("mutmut produced no results")


if __name__ == "__main__":
    main()
