"""imagen.trainer.HFDataset: Hugging Face ``datasets`` tables (saved folders, parquet, the datasets
cache by name, offline) streamed by process and worker like the shards, bad rows skipped and named."""

import io
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from imagen.trainer import HFDataset, ImagenTrainer, load_hf_dataset  # noqa: E402
from imagen.trainer.hf_data import DatasetNotFoundError  # noqa: E402
from imagen.trainer.shard_reading import decode_image  # noqa: E402
from imagen.trainer.shards import ShardStream  # noqa: E402

ROWS = 40


def _png(i, size=(12, 9)):
    """A PNG whose pixels encode ``i`` (every row its own image)."""
    rng = np.random.default_rng(i)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _table(rows=ROWS, image="image", caption="caption"):
    features = datasets.Features({image: datasets.Image(), caption: datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {image: [{"bytes": _png(i), "path": None} for i in range(rows)], caption: [f"row {i}" for i in range(rows)]},
        features=features,
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One table of 40 rows as a saved folder, a parquet folder (two files), one parquet file and
    a copy in a datasets cache under the hub name ``someone/tiny_rows`` (the ``namespace___name/
    config/version/hash`` layout ``load_dataset`` writes, written by datasets' own builder)."""
    root = tmp_path_factory.mktemp("hf")
    table = _table()
    table.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    table.select(range(25)).to_parquet(str(root / "parquet" / "train-00000-of-00002.parquet"))
    table.select(range(25, ROWS)).to_parquet(str(root / "parquet" / "train-00001-of-00002.parquet"))
    table.to_parquet(str(root / "one.parquet"))
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder = Parquet(cache_dir=str(root / "scratch"), dataset_name="tiny_rows", config_name="default",
                      data_files={"train": [str(root / "one.parquet")]})
    builder.download_and_prepare(output_dir=str(root / "cache" / "someone___tiny_rows" / "default" / "0.0.0" / "c0"))
    return root


@pytest.fixture
def offline(monkeypatch, sources):
    """HF_HUB_OFFLINE=1, the datasets cache of ``sources``, and no socket may connect."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(sources / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was reached")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)


def take(stream, count):
    return [next(stream) for _ in range(count)]


def texts_of(batches):
    return [t for b in batches for t in b["texts"]]


@pytest.mark.parametrize("kind", ["saved", "parquet", "one.parquet", "someone/tiny_rows"])
def test_every_source_reads_back_the_table_decoded_at_the_stage_size(sources, offline, kind, monkeypatch):
    monkeypatch.chdir(sources)  # the local kinds are relative paths
    dataset = HFDataset(kind, 8, augment_horizontal_flip=False, block_rows=7)
    assert len(dataset) == ROWS and list(dataset.counts) == [7] * 5 + [5]
    assert dataset.urls[-1].endswith("rows 35-39") and len(dataset.urls) == 6
    batches = take(ShardStream(dataset, 8, world=1, rank=0, seed=0, shuffle=False), 5)
    assert texts_of(batches) == [f"row {i}" for i in range(ROWS)]
    images = torch.cat([b["images"] for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (ROWS, 3, 8, 8)
    assert torch.equal(images, torch.stack([decode_image(_png(i), 8) for i in range(ROWS)]))


def test_a_name_is_read_from_the_cache_by_path_too_and_a_missing_one_is_a_clear_error(sources, offline):
    cached, label = load_hf_dataset("someone/tiny_rows", cache_dir=sources / "cache", split="train")
    assert label == "someone/tiny_rows" and cached["caption"] == [f"row {i}" for i in range(ROWS)]
    with pytest.raises(DatasetNotFoundError, match="HF_HUB_OFFLINE") as caught:
        HFDataset("someone/not_cached", 8)
    assert isinstance(caught.value, ValueError) and str(sources / "cache") in str(caught.value)
    with pytest.raises(ValueError, match=r"split='test'.*'train'"):
        HFDataset("someone/tiny_rows", 8, split="test")
    with pytest.raises(ValueError, match="not an existing file or folder"):
        HFDataset("./no/such/folder", 8)


def test_an_uncached_name_with_the_hub_unreachable_is_an_error_without_retries(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    with pytest.raises(DatasetNotFoundError, match="the hub cannot be reached"):
        HFDataset("someone/not_cached", 8, cache_dir=tmp_path)
def test_splits_follow_the_reference_cli_and_columns_are_chosen_by_name():
    both = datasets.DatasetDict({"train": _table(6), "valid": _table(3)})
    assert len(HFDataset(both, 8)) == 9  # train + valid, as the reference CLI concatenates them
    assert len(HFDataset(both, 8, split="valid")) == 3
    named = _table(4, image="picture", caption="prompt")
    dataset = HFDataset(named, 8)  # the only Image column, and a caption column of a known name
    assert (dataset.image_column, dataset.caption_column) == ("picture", "prompt")
    with pytest.raises(ValueError, match=r"caption_column='label' is not a column; the columns are \['picture', "):
        HFDataset(named, 8, caption_column="label")
    other = named.rename_column("prompt", "words")
    with pytest.raises(ValueError, match="no caption column among"):
        HFDataset(other, 8)
    assert HFDataset(other, 8, caption_column="words").caption_column == "words"
    assert not HFDataset(other, 8, captions=False).has_captions
    urls = datasets.Dataset.from_dict({"url": ["https://example.com/a.jpg"], "caption": ["a"]})
    with pytest.raises(ValueError, match="image_column='url' holds URLs"):
        HFDataset(urls, 8, image_column="url")


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 1)])
def test_processes_and_workers_read_every_row_once_per_epoch_and_resume_exactly(world, workers):
    dataset = HFDataset(_table(), 8, block_rows=3, shuffle_window=5)
    streams = [ShardStream(dataset, 6, world=world, rank=r, seed=2, num_workers=workers) for r in range(world)]
    per_rank = [texts_of(take(s, 7)) for s in streams]  # one epoch: ceil(40 / 6) batches
    seen = [t for texts in per_rank for t in texts]
    assert len(seen) == 42 and set(seen) == {f"row {i}" for i in range(ROWS)}  # 2 wrap around
    assert per_rank != [sorted(t, key=lambda s: int(s.split()[1])) for t in per_rank]  # shuffled
    straight = take(ShardStream(dataset, 6, world=world, rank=world - 1, seed=2, num_workers=workers), 12)
    first = ShardStream(dataset, 6, world=world, rank=world - 1, seed=2, num_workers=workers)
    take(first, 5)
    resumed = ShardStream(dataset, 6, world=world, rank=world - 1, seed=2, num_workers=workers)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for expected, got in zip(straight[5:], take(resumed, 7)):
        assert expected["texts"] == got["texts"] and torch.equal(expected["images"], got["images"])
    assert pickle.loads(pickle.dumps(dataset)).total == ROWS


def test_bad_rows_are_skipped_counted_and_named(tmp_path):
    table = _table(8).to_dict()
    table["image"] = [{"bytes": r["bytes"], "path": None} for r in table["image"]]
    table["image"][1] = {"bytes": b"not an image", "path": None}
    table["image"][2] = None
    table["image"][3] = {"bytes": None, "path": str(tmp_path / "gone.png")}
    table["caption"][4] = None
    table["caption"][5] = "   "
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    dataset = HFDataset(datasets.Dataset.from_dict(table, features=features), 8)
    stream = ShardStream(dataset, 4, world=1, rank=0, seed=0, shuffle=False)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        kept = texts_of(take(stream, 2))
    assert kept == ["row 0", "row 6", "row 7"]
    reasons = {key: reason for _, key, reason in stream.skipped}
    assert sorted(reasons) == ["row 1", "row 2", "row 3", "row 4", "row 5"]
    assert reasons["row 1"].startswith("unreadable image") and reasons["row 2"] == "no image"
    assert "gone.png" in reasons["row 3"] and reasons["row 4"] == "the caption is not a string (NoneType)"
    assert reasons["row 5"] == "the caption is empty"


def test_embeddings_in_a_column_come_back_trimmed_padded_and_masked():
    lengths = [1 + i % 4 for i in range(8)]
    embeds = [[[float(i)] * 6 for _ in range(n)] for i, n in enumerate(lengths)]  # row i: (1 + i % 4, 6) of i
    embeds[5] = [[5.0] * 4]  # another width
    embeds[6] = [[6.0] * 6, [6.0] * 5]  # ragged
    table = _table(8).add_column("t5", embeds).cast_column(
        "t5", datasets.Sequence(datasets.Sequence(datasets.Value("float16"))))
    dataset = HFDataset(table, 8, text_embeds_column="t5", block_rows=3)
    assert dataset.text_embed_dim == 6 and dataset.has_captions
    stream = ShardStream(dataset, 4, world=1, rank=0, seed=0, shuffle=False)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        first, second = take(stream, 2)
    assert "texts" not in first and first["text_embeds"].dtype == torch.float32
    assert first["text_embeds"].shape == (4, 4, 6) and first["text_masks"].sum(1).tolist() == lengths[:4]
    assert torch.equal(first["text_embeds"][2, :3], torch.full((3, 6), 2.0))
    assert torch.equal(first["text_embeds"][2, 3], torch.zeros(6))  # padding
    assert second["text_masks"].sum(1).tolist() == [lengths[4], lengths[7]]
    reasons = {key: reason for _, key, reason in stream.skipped}
    assert reasons["row 5"] == "text embedding of width 4, expected 6"
    assert reasons["row 6"].startswith("the text embedding must be (L, D)")
    fixed = datasets.Dataset.from_dict({"image": table["image"][:2], "e": [np.ones((3, 6)), np.ones((3, 6))]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "e": datasets.Array2D((3, 6), "float32")}))
    item = next(ShardStream(HFDataset(fixed, 8, text_embeds_column="e"), 2, world=1, rank=0, seed=0))
    assert item["text_embeds"].shape == (2, 3, 6)
    with pytest.raises(ValueError, match="text_embeds_column='e' is not a column"):
        HFDataset(table, 8, text_embeds_column="e")


def test_the_trainer_trains_from_a_hf_dataset(toy_cascade):
    torch.manual_seed(0)
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False)
    trainer.add_train_dataset(HFDataset(_table(), 8, block_rows=4), batch_size=5, num_workers=1)
    for _ in range(3):
        assert trainer.train_step() > 0
    assert trainer.imagen.calls[-1]["batch"] == 5



def test_split_valid_from_train_splits_off_rows(toy_cascade):
    dataset = HFDataset(_table(), 8, block_rows=4)
    train, valid = dataset.split_validation(0.25, seed=3)
    train_rows = set(texts_of(take(ShardStream(train, 10, world=1, rank=0, seed=0), 3)))
    valid_rows = set(texts_of(take(ShardStream(valid, 10, world=1, rank=0, seed=0), 1)))
    assert len(train_rows) == 30 and len(valid_rows) == 10 and not train_rows & valid_rows
    assert train_rows | valid_rows == {f"row {i}" for i in range(ROWS)}
    assert not valid.augment_horizontal_flip and train.augment_horizontal_flip
    assert texts_of(take(ShardStream(dataset.split_validation(0.25, seed=3)[1], 10, world=1, rank=0, seed=0),
                         1)) == texts_of(take(ShardStream(valid, 10, world=1, rank=0, seed=0), 1))  # seeded
    torch.manual_seed(0)
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False, split_valid_from_train=True,
                            split_valid_fraction=0.25)
    trainer.add_train_dataset(dataset, batch_size=4)
    assert trainer.train_step() > 0 and trainer.valid_step() > 0


RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    from imagen.trainer import HFDataset
    from imagen.trainer.shards import ShardStream

    rank, folder, rendezvous = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    stream = ShardStream(HFDataset(folder, 8, block_rows=3), 8, world=2, rank=rank, seed=4)
    texts = [t for _ in range(5) for t in next(stream)["texts"]]
    gathered = [None, None]
    dist.all_gather_object(gathered, texts)
    state = stream.state_dict()
    if rank == 0:
        print(json.dumps({"texts": gathered, "ranks": state["ranks"]}))
    dist.destroy_process_group()
""")


def test_two_gloo_processes_read_disjoint_rows(sources, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    rendezvous = tmp_path / "rendezvous"
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(sources / "saved"), str(rendezvous)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    first, second = result["texts"]
    assert len(first) == len(second) == 20 and not set(first) & set(second)  # one epoch: 5 global batches of 8
    assert set(first) | set(second) == {f"row {i}" for i in range(ROWS)}
    assert result["ranks"] == [[1, 0], [1, 0]]
