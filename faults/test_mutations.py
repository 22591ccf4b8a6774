"""Damaged checkpoint files (truncated, flipped bytes, lying headers, malformed and deeply nested
JSON, pickle payloads) against every loader: each is refused with a CheckpointError naming the
file, or loads exactly the original (a change that does not alter the content)."""

import random

import faults_lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagen.cascade import CheckpointError, load_imagen_from_checkpoint
from imagen.trainer import load_checkpoint


def test_every_loader_refuses_every_damaged_file(tmp_path, long):
    tally = faults_lib.mutation_suite(tmp_path, flips=24 if long else 8, seed=2)
    print(tally.report("damaged checkpoint files"))
    assert sum(tally.inputs.values()) > 300
    assert tally.failures == []


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    art = faults_lib.artifacts(tmp_path_factory.mktemp("originals"))
    return art.checkpoint.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_damage_is_refused(tmp_path, checkpoint_bytes, data):
    """Any truncation and any set of up to 4 flipped bits is refused by both file loaders."""
    damaged = bytearray(checkpoint_bytes)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(damaged) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(damaged) - 1), label="position")
            damaged[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(damaged))
    for load in (load_checkpoint, load_imagen_from_checkpoint):
        try:
            result = load(path)
        except CheckpointError as error:
            assert str(path) in str(error)
        else:  # only a change that leaves the content as it was may load (e.g. header whitespace)
            original = tmp_path / "original.safetensors"
            original.write_bytes(checkpoint_bytes)
            expected = load(original)
            got, want = (result.tensors, expected.tensors) if load is load_checkpoint else (
                result.state_dict(), expected.state_dict())
            assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in got)


def test_seeded_inputs_are_reproducible():
    a = faults_lib.json_mutations(b'{"a": 1}', random.Random(0))
    b = faults_lib.json_mutations(b'{"a": 1}', random.Random(0))
    assert a == b
