"""Reading imagen-pytorch checkpoints: weights-only, refused when they would need a full unpickle.

The files here are laid out as the reference's ``ImagenTrainer.save`` lays them out (the equivalence
test against a checkpoint written by the reference itself is ``reference/test_checkpoints.py``).
"""

import pickle

import pytest
import torch
from torch import nn

from imagen.cascade import (
    ImagenConfig,
    ReferenceCheckpointError,
    imagen_from_reference_checkpoint,
    read_reference_checkpoint,
)

UNET = dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
            text_embed_dim=16, attn_heads=2, attn_dim_head=8)
PARAMS = {"unets": [UNET], "image_sizes": [8], "timesteps": 7, "text_embed_dim": 16, "cond_drop_prob": 0.5}


def _randomized(module: nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


def _reference_file(path, *, with_params=True, extra=None):
    """A checkpoint laid out as imagen-pytorch's trainer writes it, for our cascade's weights."""
    cascade = ImagenConfig(**PARAMS).create()
    online, ema = _randomized(cascade, 1), _randomized(cascade.unets[0], 2)
    ema_entries = {"0.initted": torch.tensor(True), "0.step": torch.tensor(9)}
    ema_entries.update({f"0.online_model.{k}": v for k, v in online.items() if k.startswith("unets.0.")})
    ema_entries.update({f"0.ema_model.{k}": v for k, v in ema.items()})
    contents = {"model": online, "ema": ema_entries, "steps": torch.tensor([9]), "version": "2.1.0", **(extra or {})}
    if with_params:
        contents.update(imagen_type="original", imagen_params=PARAMS)
    torch.save(contents, path)
    return online, ema


def test_reads_weights_ema_and_config(tmp_path):
    online, ema = _reference_file(tmp_path / "ref.pt")
    ref = read_reference_checkpoint(tmp_path / "ref.pt")
    assert ref.version == "2.1.0" and ref.steps == [9] and ref.imagen_type == "original"
    assert ref.config() == ImagenConfig(**PARAMS)
    assert ref.ema_counters() == {0: {"step": 9, "initted": True}}
    trained = imagen_from_reference_checkpoint(tmp_path / "ref.pt")
    for key, value in trained.state_dict().items():
        assert torch.equal(value, online[key]), key
    averaged = imagen_from_reference_checkpoint(tmp_path / "ref.pt", load_ema_if_available=True)
    for key, value in averaged.unets[0].state_dict().items():
        assert torch.equal(value, ema[key]), key
    fresh = imagen_from_reference_checkpoint(tmp_path / "ref.pt", load_weights=False)
    assert not all(torch.equal(v, online[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())


def test_without_imagen_params_needs_a_config(tmp_path):
    online, _ = _reference_file(tmp_path / "ref.pt", with_params=False)
    with pytest.raises(ReferenceCheckpointError, match="no imagen_params"):
        imagen_from_reference_checkpoint(tmp_path / "ref.pt")
    cascade = imagen_from_reference_checkpoint(tmp_path / "ref.pt", config=ImagenConfig(**PARAMS))
    assert all(torch.equal(v, online[k]) for k, v in cascade.state_dict().items())


def test_weights_that_do_not_fit_are_named(tmp_path):
    _reference_file(tmp_path / "ref.pt", with_params=False)
    other = ImagenConfig(**{**PARAMS, "unets": [{**UNET, "dim": 16}]})
    with pytest.raises(ReferenceCheckpointError, match="shape mismatch"):
        imagen_from_reference_checkpoint(tmp_path / "ref.pt", config=other)


class _WritesAFile:
    """Unpickling this runs ``exec``, which would write the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("layout", ["zip", "legacy", "raw pickle"])
def test_a_checkpoint_that_needs_a_full_unpickle_is_refused_and_never_run(layout, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    contents = {"model": {}, "steps": torch.tensor([1]), "payload": _WritesAFile(marker)}
    if layout == "raw pickle":
        path.write_bytes(pickle.dumps(contents))
    else:
        torch.save(contents, path, _use_new_zipfile_serialization=layout == "zip")
    with pytest.raises(ReferenceCheckpointError, match=r"evil\.pt.*(builtins\.exec|exec)"):
        read_reference_checkpoint(path)
    assert not marker.exists()


def test_other_files_are_refused(tmp_path):
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(ReferenceCheckpointError, match="not an imagen-pytorch trainer checkpoint"):
        read_reference_checkpoint(tmp_path / "tensor.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ReferenceCheckpointError, match=r"not a torch\.save file"):
        read_reference_checkpoint(tmp_path / "text.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(ReferenceCheckpointError, match=r"not a readable torch\.save"):
        read_reference_checkpoint(tmp_path / "torn.pt")


def test_load_imagen_from_checkpoint_reads_a_reference_file(tmp_path):
    from imagen.cascade import load_imagen_from_checkpoint

    online, ema = _reference_file(tmp_path / "ref.pt")
    trained = load_imagen_from_checkpoint(tmp_path / "ref.pt")
    assert all(torch.equal(v, online[k]) for k, v in trained.state_dict().items())
    averaged = load_imagen_from_checkpoint(tmp_path / "ref.pt", load_ema_if_available=True)
    assert all(torch.equal(v, ema[k]) for k, v in averaged.unets[0].state_dict().items())
