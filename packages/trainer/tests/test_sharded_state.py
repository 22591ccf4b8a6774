"""DCP parts: a round trip, and a ``.metadata`` pickle that names anything but DCP's own records is
refused before it is loaded (a digest proves integrity, not who wrote the file)."""

import os
import pickle

import pytest
import torch

from imagen.cascade import CheckpointError
from imagen.trainer.sharded_state import METADATA, load_part, save_part, saved_shapes


def test_a_part_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"0.exp_avg": torch.randn(3, 4, generator=g), "0.step": torch.tensor(7.0),
               "rng.0": torch.randint(0, 255, (16,), dtype=torch.uint8, generator=g)}
    digests = save_part(tmp_path / "part", tensors, rank=0, main=True)
    assert METADATA in digests
    assert saved_shapes(tmp_path / "part") == {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    loaded = load_part(tmp_path / "part", {k: torch.zeros_like(v) for k, v in tensors.items()})
    for key, value in tensors.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


class _RunsCode:
    def __reduce__(self):
        return os.system, ("echo should-not-run",)


@pytest.mark.parametrize("payload", [_RunsCode(), {"x": _RunsCode()}])
def test_a_metadata_pickle_naming_other_code_is_refused(tmp_path, payload, capfd):
    save_part(tmp_path / "part", {"a": torch.ones(2)}, rank=0, main=True)
    (tmp_path / "part" / METADATA).write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=r"\.metadata is not a DCP metadata file.*system is not allowed"):
        saved_shapes(tmp_path / "part")
    with pytest.raises(CheckpointError, match="is not allowed"):
        load_part(tmp_path / "part", {"a": torch.zeros(2)})
    assert "should-not-run" not in capfd.readouterr().out
