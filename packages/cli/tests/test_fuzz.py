"""Hypothesis fuzzing of the CLI's argv (issue 13): ``main(argv)`` in-process with drawn commands,
options and values (good and bad paths, garbage files, a real tiny checkpoint), plus a few
subprocess runs. Every run exits 0 or 2 (1 would be an internal error) and a failing run prints
exactly one line on stderr, never a traceback. The counts are printed at the end (run with ``-s``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_testing import tiny_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagen.cli.main import main
from imagen.unets.testing import FuzzOutcomes, fuzz_examples

OUTCOMES = FuzzOutcomes()



GARBAGE = ["", "x", "-1", "0", "1.5", "nan", "inf", "99999999999999999999", "--", "-q", "é", "a,b", "1,,2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_t5, image_folder):
    """Files the drawn argv may point at: a config, a trained checkpoint folder, garbage files."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    config = root / "config.json"
    config.write_text(json.dumps(tiny_config(tiny_t5, image_folder, root / "checkpoints")))
    assert main(["--quiet", "train", "--config", str(config), "--steps", "1"]) == 0
    (root / "garbage.pt").write_bytes(b"\x80\x02garbage")
    (root / "text.txt").write_text("not json")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "empty-dir").mkdir()
    return root


def _paths(world: Path):
    return st.sampled_from(
        [
            str(world / "config.json"),
            str(world / "checkpoints"),
            str(world / "garbage.pt"),
            str(world / "text.txt"),
            str(world / "deep.json"),
            str(world / "empty-dir"),
            str(world / "missing"),
            str(world / "text.txt" / "under"),
            "OUT",
            "out/nested",
            ".",
        ]
    )


def _value(world: Path, good: list[str]):
    return st.one_of(st.sampled_from(good), st.sampled_from(GARBAGE), _paths(world))


def _argv(world: Path):
    steps = ["1", "2", "2,2", "1,2"]
    commands = {
        "config": {"--path": ["new.json", "sub/new.json"], "--force": None},
        "train": {
            "--config": [str(world / "config.json")],
            "--unet": ["1", "2", "3"],
            "--steps": ["1"],
            "--epochs": ["0"],
            "--resume": [str(world / "checkpoints")],
        },
        "sample": {
            "--model": [str(world / "checkpoints")],
            "--steps": steps,
            "--sampler": ["ddim", "euler,ddim"],
            "--cond-scale": ["1", "3,1", "-2"],
            "--skip-steps": ["0,1", "1"],
            "--seed": ["0", "5"],
            "--batch-size": ["1", "2"],
            "--output-dir": ["out", "OUT"],
            "--no-ema": None,
            "--load-ema": ["true", "false", "maybe"],
            "--device": ["cpu", "nonsense", "cuda:7", "meta"],
            "--num-images": ["2"],
        },
        "encode-text": {
            "--config": [str(world / "config.json")],
            "--output": ["cache"],
            "--batch-size": ["2"],
            "--overwrite": None,
            "--folder": [str(world / "empty-dir")],
        },
        "convert": {"--config": [str(world / "config.json")], "--force": None},
        "demo": {"--minutes": ["0", "-1", "x"], "--steps": ["0", "x"], "--seed": ["-1"]},
    }

    @st.composite
    def draw(draw_):
        command = draw_(st.sampled_from([*sorted(commands), "fly"]))
        table = commands.get(command, {})
        argv = [command]
        for flag in draw_(st.lists(st.sampled_from(sorted(table) or ["--x"]), max_size=4, unique=True)):
            argv.append(flag)
            if table.get(flag) is not None:
                argv.append(draw_(_value(world, table[flag])))
        if command in ("sample", "convert") or draw_(st.booleans()):
            argv += draw_(st.lists(st.sampled_from(["a red circle", "", "  ", "--", *GARBAGE[:3]]), max_size=2))
        if command == "convert":
            argv += draw_(st.lists(_paths(world), min_size=0, max_size=2))
        if command == "sample" and "--model" not in argv:
            argv += ["--model", draw_(st.sampled_from([str(world / "checkpoints"), str(world / "garbage.pt")]))]
        if command == "sample" and "--steps" not in argv:
            argv += ["--steps", "1"]  # keep the runs short
        if command == "demo" and all(flag not in argv for flag in ("--minutes", "--steps")):
            argv += ["--minutes", "0"]  # a demo that would run is out of the fuzz's time budget
        return argv

    return draw()


def _cascade_cli() -> list[str]:
    """The installed console script (what a user runs), else the same entry point through python."""
    script = Path(sys.executable).with_name("cascade-cli")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from imagen.cli.main import main; sys.exit(main())"]


def _check_run(argv, capsys):
    code = main(["--quiet", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert "Traceback" not in err, f"{argv}: {err}"
    assert code in (0, 2), f"{argv} exited {code} (1 is an internal error): {err}"
    if code:
        assert len(lines) == 1 and ": error: " in lines[0], f"{argv}: {err!r}"
    OUTCOMES[f"exit {code}"] += 1
    event(f"exit {code}")


@settings(
    max_examples=fuzz_examples(8),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@OUTCOMES.counting
def test_fuzz_cli_argv_in_process(world, data, capsys, monkeypatch):
    argv = data.draw(_argv(world))
    monkeypatch.chdir(tempfile.mkdtemp(dir=world))  # relative outputs land in a fresh folder
    _check_run(argv, capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--model", "{world}/missing", "a cat"],
        ["train", "--config", "{world}/deep.json"],
    ],
)
@OUTCOMES.counting
def test_fuzz_cli_subprocess(world, argv):
    if argv[0] == "sample" and fuzz_examples(1) == 1:
        pytest.skip("one subprocess run in the normal suite (each starts Python and torch); more in nox -s faults")
    argv = [a.format(world=world) for a in argv]
    run = subprocess.run(
        [*_cascade_cli(), "--quiet", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=world,
    )
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    OUTCOMES["subprocess exit 2"] += 1


def test_fuzz_counts():
    """Prints this module's fuzzing counts (runs last in file order)."""
    assert OUTCOMES.report("cli", "runs") == 0  # every drawn input ended as documented
