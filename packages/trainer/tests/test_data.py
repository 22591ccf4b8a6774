"""Image-folder datasets: resizing, flips, captions, embeddings, corrupt files, the epoch sampler."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imagen.trainer import Dataset, EpochSampler, collate, pad_text_embeds


def _write_image(path, width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def test_images_are_resized_and_centre_cropped(tmp_path):
    _write_image(tmp_path / "a.png", 20, 10)
    _write_image(tmp_path / "b.jpg", 8, 8, mode="L")
    ds = Dataset(tmp_path, image_size=8)
    assert len(ds) == 2 and not ds.has_captions
    for i in range(2):
        x = ds[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1


def test_identity_resize_is_exact(tmp_path):
    _write_image(tmp_path / "a.png", 8, 8, seed=3)
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1).float() / 255
    assert torch.equal(Dataset(tmp_path, 8, augment_horizontal_flip=False)[0], expected)


def test_flip_is_a_pure_function_of_the_augmentation_seed(tmp_path):
    _write_image(tmp_path / "a.png", 8, 8)
    plain = Dataset(tmp_path, 8, augment_horizontal_flip=False)[0]
    ds = Dataset(tmp_path, 8)  # flips by default, as the reference
    drawn = [ds[0] for _ in range(32)]  # a plain index draws the flip from the dataset's generator
    assert any(torch.equal(o, plain.flip(-1)) for o in drawn) and any(torch.equal(o, plain) for o in drawn)
    outs = [ds[(0, seed)] for seed in range(16)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain.flip(-1)) for o in outs) and any(torch.equal(o, plain) for o in outs)
    assert all(torch.equal(ds[(0, s)], outs[s]) for s in range(16))


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path):
    for i in range(3):
        _write_image(tmp_path / f"ok{i}.png", 8, 8, seed=i)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    with pytest.warns(UserWarning, match="garbage.png"):
        ds = Dataset(tmp_path, 8)
    assert len(ds) == 3 and [p for p, _ in ds.skipped] == [str(tmp_path / "garbage.png")]
    # a file that breaks after construction is skipped at load time, never a crash
    data = (tmp_path / "ok0.png").read_bytes()
    (tmp_path / "ok0.png").write_bytes(data[:40])
    with pytest.warns(UserWarning, match="ok0.png"):
        x = ds[0]
    assert x.shape == (3, 8, 8) and len(ds.skipped) == 2


def test_sidecar_and_jsonl_captions(tmp_path):
    _write_image(tmp_path / "a.png", 8, 8)
    (tmp_path / "a.txt").write_text("a red square\n")
    _write_image(tmp_path / "b.png", 8, 8)
    _write_image(tmp_path / "c.png", 8, 8)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "blue"}) + "\n")
    with pytest.warns(UserWarning, match=r"c\.png"):
        ds = Dataset(tmp_path, 8)
    assert ds.has_captions and len(ds) == 2
    assert [ds[i]["texts"] for i in range(2)] == ["a red square", "blue"]
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 8, 8) and batch["texts"] == ["a red square", "blue"]
    assert len(Dataset(tmp_path, 8, captions=False)) == 3


def test_a_stray_sidecar_drops_no_image(tmp_path):
    for name in "abc":
        _write_image(tmp_path / f"{name}.png", 8, 8)
    (tmp_path / "a.txt").write_text("a caption")
    with pytest.warns(UserWarning, match="only 1 of 3 images have a caption"):
        ds = Dataset(tmp_path, 8)
    assert len(ds) == 3 and not ds.has_captions and ds.skipped == []
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "c.txt").write_text("c")
    assert Dataset(tmp_path, 8).has_captions  # every image captioned: captions used
    (tmp_path / "c.txt").unlink()
    with pytest.warns(UserWarning, match=r"c\.png"):
        required = Dataset(tmp_path, 8, captions=True)
    assert len(required) == 2 and [p for p, _ in required.skipped] == [str(tmp_path / "c.png")]


def test_reference_keyword_convert_image_to_type(tmp_path):
    _write_image(tmp_path / "a.png", 8, 8)
    assert Dataset(tmp_path, 8, convert_image_to_type="L")[0].shape == (1, 8, 8)


class _Cache:
    """Stands in for imagen.text.TextEmbeddingCache: embeddings of length len(caption), dim 4."""

    def lookup(self, captions):
        length = max(len(c) for c in captions)
        embeds = torch.zeros(len(captions), length, 4)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for i, c in enumerate(captions):
            embeds[i, : len(c)] = float(len(c))
            mask[i, : len(c)] = True
        return embeds, mask


def test_embedding_cache_items_and_padding_collate(tmp_path):
    for name, caption in [("a", "ab"), ("b", "abcde")]:
        _write_image(tmp_path / f"{name}.png", 8, 8)
        (tmp_path / f"{name}.txt").write_text(caption)
    ds = Dataset(tmp_path, 8, text_embedding_cache=_Cache())
    batch = collate([ds[0], ds[1]])
    assert batch["text_embeds"].shape == (2, 5, 4)
    assert batch["text_masks"].tolist() == [[True, True, False, False, False], [True] * 5]
    assert torch.equal(batch["text_embeds"][0, :2], torch.full((2, 4), 2.0)) and batch["text_embeds"][0, 2:].eq(0).all()


@given(st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_pad_text_embeds_property(lengths):
    embeds = [torch.randn(n, 3) for n in lengths]
    out, mask = pad_text_embeds(embeds)
    assert out.shape == (len(lengths), max(lengths), 3)
    assert mask.sum(1).tolist() == lengths
    for i, e in enumerate(embeds):
        assert torch.equal(out[i, : len(e)], e) and out[i, len(e) :].eq(0).all()


@given(st.integers(1, 30), st.integers(1, 4), st.integers(1, 3), st.integers(0, 5), st.integers(0, 3))
def test_epoch_sampler_covers_and_shards(size, per_rank, world, epoch, seed):
    batch = per_rank * world
    shards = [list(EpochSampler(size, batch, num_replicas=world, rank=r, seed=seed, epoch=epoch)) for r in range(world)]
    again = list(EpochSampler(size, batch, num_replicas=world, rank=0, seed=seed, epoch=epoch))
    assert shards[0] == again  # reproducible
    sampler = EpochSampler(size, batch, num_replicas=world, seed=seed, epoch=epoch)
    assert all(len(s) == len(sampler) == sampler.batches_per_epoch * per_rank for s in shards)
    seen = {i for s in shards for i, _ in s}
    assert seen == set(range(size))  # every item every epoch
    # resuming at batch k yields exactly the tail
    k = sampler.batches_per_epoch - 1
    tail = list(EpochSampler(size, batch, num_replicas=world, rank=0, seed=seed, epoch=epoch, start_batch=k))
    assert tail == shards[0][k * per_rank :]


def test_epoch_sampler_rejects_uneven_split():
    with pytest.raises(ValueError, match="divisible"):
        EpochSampler(10, 3, num_replicas=2)


def _captioned_folder(tmp_path, count=3):
    for i in range(count):
        _write_image(tmp_path / f"ok{i}.png", 8, 8, seed=i)
        (tmp_path / f"ok{i}.txt").write_text(f"caption {i}")
    return tmp_path


def test_a_caption_file_that_is_not_utf8_is_skipped_and_named(tmp_path):
    _captioned_folder(tmp_path)
    _write_image(tmp_path / "latin.png", 8, 8)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample.*latin\.txt is not UTF-8") as caught:
        ds = Dataset(tmp_path, 8)
    assert len([w for w in caught if "Dataset" in str(w.message)]) == 1  # one warning, not one per file
    assert len(ds) == 3 and [p for p, _ in ds.skipped] == [str(tmp_path / "latin.png")]
    assert sorted(ds[i]["texts"] for i in range(3)) == ["caption 0", "caption 1", "caption 2"]


def test_an_empty_caption_is_skipped(tmp_path):
    _captioned_folder(tmp_path)
    _write_image(tmp_path / "blank.png", 8, 8)
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.warns(UserWarning, match=r"blank\.txt is empty"):
        ds = Dataset(tmp_path, 8)
    assert len(ds) == 3 and all(ds[i]["texts"] for i in range(3))


def test_bad_metadata_lines_are_skipped_counted_and_named(tmp_path):
    names = ["a", "b", "c", "d", "e", "f", "g"]
    for name in names:
        _write_image(tmp_path / f"{name}.png", 8, 8)
    lines = [
        json.dumps({"file_name": "a.png", "text": "kept"}),
        json.dumps(["b.png", "a list, not an object"]),
        json.dumps({"file_name": "c.png"}),  # no text: never the caption "None"
        json.dumps({"file_name": "d.png", "text": ""}),
        json.dumps({"file_name": "e.png", "text": None}),
        "{not json",
        "[" * 100_000,  # deeply nested: a bad line, not a RecursionError
        json.dumps({"file_name": "f.png", "caption": "the caption key"}),
    ]
    raw = "\n".join(lines).encode() + b"\n" + b'{"file_name": "g.png", "text": "\xff"}\n'
    (tmp_path / "metadata.jsonl").write_bytes(raw)
    with pytest.warns(UserWarning, match=r"skipped \d+ bad sample.*metadata\.jsonl:2 \(not a JSON object"):
        ds = Dataset(tmp_path, 8)
    assert len(ds) == 2 and sorted(ds[i]["texts"] for i in range(2)) == ["kept", "the caption key"]
    bad_lines = {p.rsplit(":", 1)[1] for p, _ in ds.skipped if "metadata.jsonl:" in p}
    assert bad_lines == {"2", "3", "4", "5", "6", "7", "9"}
    reasons = dict(ds.skipped)
    assert "'text' must be a string, got None" in reasons[f"{tmp_path / 'metadata.jsonl'}:3"]
    assert "empty 'text'" in reasons[f"{tmp_path / 'metadata.jsonl'}:4"]
    assert "not UTF-8" in reasons[f"{tmp_path / 'metadata.jsonl'}:9"]
    skipped_images = {p for p, _ in ds.skipped if p.endswith(".png")}
    assert skipped_images == {str(tmp_path / f"{n}.png") for n in "bcdeg"}
    images_only = Dataset(tmp_path, 8, captions=False)  # the metadata is not read: nothing to skip
    assert len(images_only) == 7 and images_only.skipped == []


def test_nothing_usable_names_the_folder_and_the_reasons(tmp_path):
    _write_image(tmp_path / "a.png", 8, 8)
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"holds no usable image.*skipped 1 bad sample.*a\.txt is not UTF-8") as info:
        Dataset(tmp_path, 8)
    assert str(tmp_path) in str(info.value)


def test_the_warning_names_only_the_first_few(tmp_path):
    _captioned_folder(tmp_path, count=1)
    for i in range(9):
        _write_image(tmp_path / f"bad{i}.png", 8, 8)
        (tmp_path / f"bad{i}.txt").write_text("")
    with pytest.warns(UserWarning, match=r"skipped 9 bad sample.*and 4 more"):
        ds = Dataset(tmp_path, 8)
    assert len(ds) == 1 and len(ds.skipped) == 9
