"""The one checkpoint container and the one atomic write: mandatory digests, format and version,
clear refusals naming the file, partial files under one pruned pattern, save_pretrained as a folder."""

import json
import struct

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import (
    CheckpointError,
    Imagen,
    ReferenceCheckpointError,
    atomic_write,
    load_imagen_from_checkpoint,
    read_container,
    remove_stale_partials,
    write_container,
)
from imagen.cascade.container import encode_container, is_partial_name, looks_like_torch_save, partial_name

FORMATS = {"test-format": 3}
DEAD_PID = 4194305  # above Linux's largest pid: never a live process


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 2, generator=g), "b": torch.arange(4), "c": torch.randn(2, generator=g).half()}


def _rewrite_header(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_round_trip_and_no_partial_left(tmp_path):
    path = write_container(tmp_path / "x.safetensors", _tensors(), format="test-format", version=2,
                           metadata={"note": "hello"})
    container = read_container(path, formats=FORMATS)
    assert (container.format, container.version, container.metadata["note"]) == ("test-format", 2, "hello")
    for key, value in _tensors().items():
        assert torch.equal(container.tensors[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


@pytest.mark.parametrize("change, message", [
    (lambda h: h["__metadata__"].pop("tensors_sha256"), "no tensors_sha256 digest"),
    (lambda h: h["__metadata__"].pop("metadata_sha256"), "no metadata_sha256 digest"),
    (lambda h: h["__metadata__"].__setitem__("note", "edited"), "metadata does not match"),
    (lambda h: h["__metadata__"].__setitem__("format", "other"), "not an imagen checkpoint"),
    (lambda h: h["__metadata__"].__setitem__("format_version", "4"), "format_version=4"),
    (lambda h: h["__metadata__"].__setitem__("format_version", "x"), "no valid format_version"),
    (lambda h: h["a"].__setitem__("dtype", "I32"), "do not match the digest"),
    (lambda h: h["a"]["data_offsets"].__setitem__(1, h["a"]["data_offsets"][1] + 4), "does not fill"),
])
def test_every_check_refuses_naming_the_file(tmp_path, change, message):
    path = write_container(tmp_path / "x.safetensors", _tensors(), format="test-format", version=2,
                           metadata={"note": "hello"})
    _rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=message) as caught:
        read_container(path, formats=FORMATS)
    assert str(path) in str(caught.value)


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    raw = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="nested deeper"):
        read_container(path, formats=FORMATS)


def test_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path):
    for pad in range(200):
        data = encode_container({"w": torch.ones(1)}, format="test-format", version=1, metadata={"p": "x" * pad})
        if data[0] == 0x80:
            break
    assert data[0] == 0x80 and not looks_like_torch_save(data[:9])
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    assert read_container(path, formats=FORMATS).metadata["p"] == "x" * pad
    assert looks_like_torch_save(b"\x80\x04\x95\x00\x00") and looks_like_torch_save(b"PK\x03\x04")


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, b"old")

    def broken(temporary):
        temporary.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"could not write .*f\.txt.*nothing was replaced"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_stale_partials_of_our_pattern_only_are_removed(tmp_path):
    mine = tmp_path / partial_name("a.safetensors")
    dead = tmp_path / f".a.safetensors.partial-{DEAD_PID}-0123abcd"
    dead_folder = tmp_path / f".model.partial-{DEAD_PID}-0123abcd"
    foreign = tmp_path / ".tmpXYZ123"
    for path in (mine, dead, foreign):
        path.write_bytes(b"x")
    dead_folder.mkdir()
    (dead_folder / "config.json").write_text("{}")
    assert is_partial_name(mine.name) and not is_partial_name(foreign.name)
    assert sorted(p.name for p in remove_stale_partials(tmp_path)) == sorted([dead.name, dead_folder.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, foreign.name])


def _cascade(seed):
    return randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16), seed=seed)


def test_save_pretrained_replaces_the_folder_whole(tmp_path):
    folder = tmp_path / "model"
    _cascade(1).save_pretrained(folder)
    second = _cascade(2)
    second.save_pretrained(folder)
    loaded = load_imagen_from_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files too"):
        _cascade(1).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_save_pretrained_failure_keeps_the_previous_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    first = _cascade(1)
    first.save_pretrained(folder)
    from imagen.cascade import persistence

    def full(path, data):
        path.write_bytes(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "_write_synced", full)
    with pytest.raises(OSError, match="No space left"):
        _cascade(2).save_pretrained(folder)
    monkeypatch.undo()
    loaded = load_imagen_from_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), first.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_edited_config_json_is_refused(tmp_path):
    folder = tmp_path / "model"
    _cascade(1).save_pretrained(folder)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"timesteps": 1000', '"timesteps": 999'))
    with pytest.raises(CheckpointError, match="does not match the config digest"):
        load_imagen_from_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not match the config digest"):
        load_imagen_from_checkpoint(folder, load_weights=False)


def test_reference_errors_are_checkpoint_errors(tmp_path):
    assert issubclass(ReferenceCheckpointError, CheckpointError) and issubclass(CheckpointError, ValueError)
    path = tmp_path / "ref.pt"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    data = bytearray(path.read_bytes())
    i = data.index(struct.pack("<f", 1.0))  # the tensor's bytes: torch.load would not notice the flip
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32") as caught:
        load_imagen_from_checkpoint(path)
    assert str(path) in str(caught.value)
