"""The one checkpoint container and the one atomic write: mandatory digests, format and version,
clear refusals naming the file, partial files under one pruned pattern, save_pretrained as a folder."""

import json
import os
import struct
import sys

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
    (lambda h: h["a"].__setitem__("extra", 1), "malformed header entry for tensor 'a'"),
    (lambda h: h.__setitem__("d", [1]), "malformed header entry for tensor 'd'"),
    (lambda h: h["a"].__setitem__("shape", [3, "2"]), "malformed shape"),
    (lambda h: h["a"].__setitem__("data_offsets", [0]), "malformed data_offsets"),
    (lambda h: h["a"].__setitem__("dtype", "F128"), "unknown dtype 'F128'"),
    (lambda h: h.__setitem__("__metadata__", {"format": 1}), "malformed metadata"),
    (lambda h: h["a"].__setitem__("data_offsets", [h["b"]["data_offsets"][0], h["b"]["data_offsets"][0] + 24]),
     "overlapping or gapped"),
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


@pytest.mark.parametrize("head, expected", [
    (b"PK\x03\x04", True),  # a torch.save zip archive
    (b"PK\x03\x04\x00\x00\x00\x00{", False),  # a safetensors header length that starts like one
    (b"\x80\x02}q\x00", True),  # protocol 2 pickle
    (b"\x80\x05\x95", True),  # protocol 5 pickle, FRAME
    (b"\x80\x01}", False),  # no protocol 1 pickle starts with PROTO
    (b"\x80\x06}", False),
    (b"\x80\x02\x1f", False),  # a control byte is no opcode
    (b"\x80\x02\x20", True),
    (b"\x80\x02", False),  # too short to tell: not a pickle
    (b"\x80\x02\x00\x00\x00\x00\x00\x00{", False),  # safetensors, header length 640
    (b"{}", False),
])
def test_looks_like_torch_save(head, expected):
    assert looks_like_torch_save(head) is expected


@pytest.mark.parametrize("content, message", [
    (b"\x80\x04\x95" + b"\x00" * 20, "is a Python pickle"),
    (b"PK\x03\x04" + b"\x00" * 20, "is a zip archive"),
    (b"\x80\x04", "is a Python pickle"),  # shorter than a header length
    (b"abc", "is truncated: 3 bytes"),
    (struct.pack("<Q", 4) + b"xyz ", "does not start with '{'"),
    (struct.pack("<Q", 4) + b"{\xff} ", "unreadable safetensors header"),
    (struct.pack("<Q", 2**40) + b"{}", "header length 1099511627776 does not fit in the file's 10 bytes"),
    (struct.pack("<Q", 2**63) + b"{}", "header length 9223372036854775808 does not fit"),
    (struct.pack("<Q", 100) + b"{}", "header length 100 does not fit in the file's 10 bytes"),
    (struct.pack("<Q", 3) + b"{}", "header length 3 does not fit in the file's 10 bytes"),
])
def test_refusals_of_what_is_not_a_container(tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as caught:
        read_container(path, formats=FORMATS)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_container(tmp_path / "nothing.safetensors", formats=FORMATS)


def test_version_bounds_and_metadata_types(tmp_path):
    path = write_container(tmp_path / "x.safetensors", _tensors(), format="test-format", version=3)
    assert read_container(path, formats=FORMATS).version == 3
    with pytest.raises(CheckpointError, match="format_version=3; this version of imagen reads versions 1 to 2"):
        read_container(path, formats={"test-format": 2})
    zero = write_container(tmp_path / "z.safetensors", _tensors(), format="test-format", version=0)
    with pytest.raises(CheckpointError, match="format_version=0"):
        read_container(zero, formats=FORMATS)
    with pytest.raises(TypeError, match="strings to strings"):
        write_container(tmp_path / "y.safetensors", _tensors(), format="test-format", version=1, metadata={"a": 1})
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        write_container(tmp_path / "y.safetensors", {"a": [1]}, format="test-format", version=1)
    assert not (tmp_path / "y.safetensors").exists()


def test_shared_and_sliced_tensors_are_written_whole(tmp_path):
    base = torch.arange(10.0)
    tensors = {"all": base, "view": base[2:5], "same": base, "t": base.reshape(2, 5).t()}
    path = write_container(tmp_path / "x.safetensors", tensors, format="test-format", version=1)
    loaded = read_container(path, formats=FORMATS).tensors
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value), key


def test_json_depth_counts_brackets_outside_strings_only():
    from imagen.cascade import parse_checkpoint_json

    deep_string = json.dumps({"s": "[" * 1000 + '\\"{' * 100})
    assert parse_checkpoint_json(deep_string, "x")["s"].startswith("[[[")
    assert parse_checkpoint_json("[" * 64 + "]" * 64, "x") is not None
    with pytest.raises(CheckpointError, match="nested deeper than 64"):
        parse_checkpoint_json("[" * 65 + "]" * 65, "the file")
    escaped_quote = json.dumps({"s": '"' + "[" * 100})  # brackets after an escaped quote, still in the string
    assert parse_checkpoint_json(escaped_quote, "x") == {"s": '"' + "[" * 100}
    with pytest.raises(CheckpointError, match="nested deeper"):  # 30 - 1 + 40 = 69 levels at the deepest
        parse_checkpoint_json("[" * 30 + "]" + "[" * 40 + "]" * 69, "x")
    with pytest.raises(CheckpointError, match="nested deeper"):  # siblings do not reduce the depth
        parse_checkpoint_json("[" + "[], " * 10 + "[" * 64 + "1" + "]" * 65, "x")
    nested_values = json.dumps([*json.loads("[" * 60 + "1" + "]" * 60), [[[[{"k": "v"}]]]]])
    with pytest.raises(CheckpointError, match="nested deeper"):
        parse_checkpoint_json("[" * 10 + nested_values + "]" * 10, "x")
    with pytest.raises(CheckpointError, match=r"the file is not valid JSON .*duplicate names \['a'\]"):
        parse_checkpoint_json('{"a": 1, "a": 2}', "the file")


def test_process_liveness_and_partial_pids():
    from imagen.cascade.container import _partial_pid, _process_alive

    assert _process_alive(os.getpid()) and not _process_alive(DEAD_PID) and not _process_alive(2**70)
    assert _partial_pid(f".a.b.partial-{DEAD_PID}-0123abcd") == DEAD_PID
    assert _partial_pid(".a.tmp-12-0123abcd") == 12 and _partial_pid(".a.34.tmp") == 34
    assert _partial_pid("a.partial-1-0123abcd") is None and _partial_pid(".a.partial-1-0123abcz") is None


def test_replace_folder_without_an_atomic_exchange(tmp_path, monkeypatch):
    from imagen.cascade import container

    monkeypatch.setattr(container, "_rename_exchange", lambda a, b: False)
    folder = tmp_path / "model"
    _cascade(1).save_pretrained(folder)
    second = _cascade(2)
    second.save_pretrained(folder)
    loaded = load_imagen_from_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_named_os_errors_keep_their_type_and_errno(tmp_path):
    from imagen.cascade.container import _named

    error = _named(PermissionError(13, "Permission denied"), tmp_path / "x")
    assert isinstance(error, PermissionError) and error.errno == 13
    assert str(error).endswith(f"could not write {tmp_path / 'x'}: Permission denied; nothing was replaced")
    plain = OSError("no errno")
    assert _named(plain, tmp_path) is plain


def test_rename_exchange_swaps_two_folders(tmp_path):
    from imagen.cascade.container import _rename_exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is Linux's")
    assert _rename_exchange(a, b) is True
    assert [p.name for p in a.iterdir()] == ["from_b"] and [p.name for p in b.iterdir()] == ["from_a"]
    with pytest.raises(OSError):
        _rename_exchange(tmp_path / "missing", a)


def test_atomic_write_with_a_writer_function_and_nested_folders(tmp_path, monkeypatch):
    from imagen.cascade import container

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(container.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    seen = []

    def writer(temporary):
        seen.append(temporary)
        temporary.write_text("new")

    assert atomic_write(tmp_path / "f.txt", writer) == tmp_path / "f.txt"
    assert (tmp_path / "f.txt").read_text() == "new" and len(synced) == 2  # the file, then the folder
    assert seen[0].parent == tmp_path and is_partial_name(seen[0].name) and seen[0].name.startswith(".f.txt.")
    path = write_container(tmp_path / "a" / "b" / "x.safetensors", _tensors(), format="test-format", version=1)
    assert read_container(path, formats=FORMATS).version == 1
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["x.safetensors"]
