"""SIGKILL a training process with a checkpoint every step, at random times aimed inside saves."""

import faults_lib


def test_sigkill_loop(tmp_path, long):
    trials = 60 if long else 12
    report = faults_lib.kill_loop(tmp_path / "checkpoints", trials, seed=1)
    print(report.report())
    assert report.trials == trials
    assert report.kills_inside_save > 0
    assert report.failures == []
