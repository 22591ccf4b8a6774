"""webdataset shards: writing, the split by process and worker, exact resume, bad samples, spawn."""

import collections
import io
import json
import pickle
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from imagen.trainer import Dataset, ImagenTrainer, ShardDataset, index_shards, write_shards
from imagen.trainer.shards import ShardEpochs, ShardStream, loader_settings

EMBED_DIM = 8


def sample_pairs(count, size=16, seed=0):
    """``(image, caption, embedding)``: caption ``"<i>"``, embedding ``(1 + i % 5, 8)`` filled with ``i``."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        yield image, str(i), torch.full((1 + i % 5, EMBED_DIM), float(i))


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory):
    """300 samples of 16 px in 14 shards of 23 (the last one shorter), with fp16 embeddings."""
    out = tmp_path_factory.mktemp("shards")
    return write_shards(sample_pairs(300), out, samples_per_shard=23, embed_dtype=torch.float16)


def captions(index, **kwargs):
    return ShardDataset(index, 16, text_embeds=False, **kwargs)


def take(stream, count):
    return [next(stream) for _ in range(count)]


def texts_of(batches):
    return [t for b in batches for t in b["texts"]]


def test_write_shards_from_a_folder_reads_back_as_the_folder_dataset(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 20 + i, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"caption {i}")
    index = write_shards(folder, tmp_path / "out", samples_per_shard=5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"]  # no partial file left
    assert [s["samples"] for s in json.loads(index.read_text())["shards"]] == [5, 5, 2]
    shards = ShardDataset(index, 8, augment_horizontal_flip=False)
    stream = ShardStream(shards, 4, world=1, rank=0, seed=0, shuffle=False)
    batches = take(stream, 3)
    folder_ds = Dataset(folder, 8, augment_horizontal_flip=False)
    assert texts_of(batches) == folder_ds.captions
    images = torch.cat([b["images"] for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 8, 8)
    expected = torch.stack([(folder_ds[i]["images"] * 255).round().to(torch.uint8) for i in range(12)])
    assert torch.equal(images, expected)


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 0), (4, 1)])
def test_processes_and_workers_read_every_sample_once_per_epoch(shard_index, world, workers):
    dataset = captions(shard_index, shuffle_window=10)
    streams = [ShardStream(dataset, 12, world=world, rank=r, seed=5, num_workers=workers) for r in range(world)]
    assert streams[0].batches_per_epoch == 25  # 300 / 12
    orders = []
    for epoch in range(2):
        per_rank = [texts_of(take(s, 25)) for s in streams]
        assert all(len(t) == 25 * 12 // world for t in per_rank)  # every process takes the same steps
        seen = [t for texts in per_rank for t in texts]
        assert sorted(seen, key=int) == [str(i) for i in range(300)]  # once each, none twice
        assert all(s.state_dict()["epoch"] == epoch + 1 and s.state_dict()["batch"] == 0 for s in streams)
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order every epoch


def test_an_epoch_that_does_not_fill_its_last_batch_wraps_around(shard_index):
    dataset = captions(shard_index)
    streams = [ShardStream(dataset, 16, world=2, rank=r, seed=0) for r in range(2)]
    seen = collections.Counter(t for s in streams for t in texts_of(take(s, 19)))  # ceil(300 / 16) = 19
    assert set(seen) == {str(i) for i in range(300)} and sum(seen.values()) == 19 * 16
    assert sum(c - 1 for c in seen.values()) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(shard_index, workers):
    dataset = ShardDataset(shard_index, 16, shuffle_window=7)  # with embeddings; windows cut mid-batch
    straight = take(ShardStream(dataset, 12, world=2, rank=1, seed=3, num_workers=workers), 60)
    for stop in (7, 25, 31):  # mid-epoch, an epoch's end, the next epoch (25 batches each)
        first = ShardStream(dataset, 12, world=2, rank=1, seed=3, num_workers=workers)
        take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        resumed = ShardStream(dataset, 12, world=2, rank=1, seed=3, num_workers=workers)
        resumed.load_state_dict(state)
        for expected, got in zip(straight[stop:stop + 8], take(resumed, 8)):
            assert torch.equal(expected["images"], got["images"])
            assert torch.equal(expected["text_embeds"], got["text_embeds"])
            assert torch.equal(expected["text_masks"], got["text_masks"])


def test_embeddings_come_back_trimmed_padded_and_masked(shard_index):
    dataset = ShardDataset(shard_index, 16)
    assert dataset.text_embeds and dataset.text_embed_dim == EMBED_DIM
    batch = next(ShardStream(dataset, 10, world=1, rank=0, seed=0, shuffle=False))
    assert set(batch) == {"images", "text_embeds", "text_masks"}
    for i in range(10):  # sample i: 1 + i % 5 tokens of value i, then padding
        length = 1 + i % 5
        assert batch["text_masks"][i].tolist() == [True] * length + [False] * (5 - length)
        assert torch.equal(batch["text_embeds"][i, :length], torch.full((length, EMBED_DIM), float(i)))
        assert not batch["text_embeds"][i, length:].any()


def test_the_dataset_pickles_and_trains_through_spawned_workers(shard_index, tmp_path, image_folder):
    folder = Dataset(image_folder(tmp_path / "images", 3), 16)  # the folder Dataset pickles too
    assert torch.equal(pickle.loads(pickle.dumps(folder))[(1, 7)], folder[(1, 7)])
    dataset = captions(shard_index, shuffle_window=5)
    again = pickle.loads(pickle.dumps(dataset))
    assert (again.urls, again.counts, again.image_size) == (dataset.urls, dataset.counts, dataset.image_size)
    view = ShardEpochs(dataset, 8, world=1, rank=0, num_workers=2, seed=1, shuffle=True, start=3)
    assert pickle.loads(pickle.dumps(view)).start == 3
    forked = take(ShardStream(dataset, 8, world=1, rank=0, seed=1, num_workers=2), 3)
    spawned = take(ShardStream(dataset, 8, world=1, rank=0, seed=1, num_workers=2,
                               multiprocessing_context="spawn"), 3)
    assert texts_of(spawned) == texts_of(forked)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(forked, spawned))


# ------------------------------------------------------------------------------------ bad input


def _png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _embed(width, value=1.0):
    from safetensors.torch import save

    return save({"text_embeds": torch.full((2, width), value, dtype=torch.bfloat16)})


def bad_shards(folder):
    """Shard a: 4 good samples and one of each bad kind; shard b: 6 good samples, truncated in the
    last one's image (its index, written before, says 6)."""
    folder.mkdir()
    good = [{"__key__": f"good{i}", "png": _png(i), "txt": f"good {i}".encode(), "safetensors": _embed(EMBED_DIM)}
            for i in range(4)]
    bad = [
        {"__key__": "nopicture", "txt": b"a caption without an image", "safetensors": _embed(EMBED_DIM)},
        {"__key__": "latin1", "png": _png(9), "txt": "caf\xe9".encode("latin-1"), "safetensors": _embed(EMBED_DIM)},
        {"__key__": "wide", "png": _png(10), "txt": b"too wide", "safetensors": _embed(EMBED_DIM + 3)},
        {"__key__": "noembed", "png": _png(11), "txt": b"embedding cut short", "safetensors": _embed(EMBED_DIM)[:20]},
        {"__key__": "corrupt", "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "txt": b"broken", "safetensors":
         _embed(EMBED_DIM)},
    ]
    with TarWriter(str(folder / "a.tar")) as sink:
        for sample in good[:2] + bad + good[2:]:
            sink.write(sample)
    with TarWriter(str(folder / "b.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"tail{i}", "png": _png(20 + i), "txt": f"tail {i}".encode(),
                        "safetensors": _embed(EMBED_DIM)})
    index = index_shards(str(folder / "*.tar"), folder, text_embed_dim=EMBED_DIM)
    data = (folder / "b.tar").read_bytes()
    (folder / "b.tar").write_bytes(data[: len(data) - 2048])  # cut inside the last sample
    return index


def test_bad_samples_are_skipped_counted_and_named(tmp_path):
    index = bad_shards(tmp_path / "bad")
    assert [s["samples"] for s in json.loads(index.read_text())["shards"]] == [9, 6]
    for embeds, bad_keys in ((False, {"nopicture", "latin1", "corrupt"}),
                             (True, {"nopicture", "wide", "noembed", "corrupt"})):
        dataset = ShardDataset(index, 16, text_embeds=embeds)
        stream = ShardStream(dataset, 2, world=1, rank=0, seed=0)
        with pytest.warns(UserWarning, match=r"bad sample\(s\) skipped so far"):
            batches = take(stream, 5)  # an epoch: 8 batches of 2 positions, some passed over
            while stream.epoch == 0:
                batches.append(next(stream))
        skipped = {key: (url, reason) for url, key, reason in stream.skipped}
        named = {key for key in skipped if not key.startswith("#")}
        assert named == bad_keys
        assert all(skipped[key][0].endswith("a.tar") for key in named)
        reasons = {"nopicture": "no image member", "latin1": "not UTF-8", "wide": "width 11, expected 8",
                   "noembed": ".safetensors member is unreadable", "corrupt": "unreadable image"}
        assert all(reasons[key] in skipped[key][1] for key in named), skipped
        truncated = [(url, reason) for url, key, reason in stream.skipped if key.startswith("#")]
        assert len(truncated) >= 1 and all(url.endswith("b.tar") for url, _ in truncated)
        got = [int(e[0, 0]) if embeds else t for b in batches for e, t in
               zip(b.get("text_embeds", b["images"]), b.get("texts", b["images"]))]
        assert len(got) + len(stream.skipped) == 16  # every position once (15, and 1 repeat): good or counted


def test_unusable_shard_lists_are_refused_before_training(tmp_path, shard_index):
    with pytest.raises(ValueError, match="no shard matches"):
        ShardDataset(str(tmp_path / "nothing-*.tar"), 16)
    with pytest.raises(ValueError, match=r"1 of 2 shards do not exist"):
        ShardDataset([str(shard_index.parent / "shard-000000.tar"), str(tmp_path / "gone.tar")], 16)
    with pytest.raises(ValueError, match="holds no shard index"):
        ShardDataset(tmp_path, 16)
    moved = tmp_path / "moved.json"
    moved.write_text(shard_index.read_text())  # relative shard names that do not resolve here
    with pytest.raises(ValueError, match="14 of 14 shards do not exist"):
        ShardDataset(moved, 16)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable shard index"):
        ShardDataset(tmp_path / "broken.json", 16)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(ValueError, match="hold no sample"):
        ShardDataset(str(empty), 16)
    with pytest.raises(ValueError, match="holds no sample to write"):
        write_shards([], tmp_path / "none")
    assert not list((tmp_path / "none").iterdir())


# -------------------------------------------------------------------------------------- trainer


def test_loader_settings_are_checked_up_front():
    assert loader_settings(2, True, True, 4) == {"num_workers": 2, "pin_memory": True, "persistent_workers": True,
                                                 "prefetch_factor": 4}
    with pytest.raises(ValueError, match="need num_workers >= 1"):
        loader_settings(0, persistent_workers=True)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        loader_settings(-1)
    with pytest.raises(ValueError, match="prefetch_factor must be None or an int >= 1, got 0"):
        loader_settings(1, prefetch_factor=0)


def _flat(trainer):
    return torch.cat([p.detach().reshape(-1) for p in trainer.imagen.parameters()])


def test_the_trainer_trains_from_shards_and_resumes_exactly(shard_index, toy_cascade, tmp_path):
    def trainer():
        torch.manual_seed(0)
        t = ImagenTrainer(toy_cascade(num_unets=1), verbose=False, ema_update_after_step=0, ema_update_every=1)
        t.add_train_dataset(ShardDataset(shard_index, 16, shuffle_window=9), batch_size=10, num_workers=1,
                            prefetch_factor=2)
        return t

    straight = trainer()
    for _ in range(8):
        straight.train_step()
    first = trainer()
    for _ in range(5):
        first.train_step()
    first.save(tmp_path / "ckpt.safetensors")
    resumed = trainer()
    resumed.load(tmp_path / "ckpt.safetensors")
    for _ in range(3):
        resumed.train_step()
    assert torch.equal(_flat(straight), _flat(resumed))
    calls = straight.imagen.calls[-1]
    assert calls["text_embeds"].shape[-1] == EMBED_DIM and calls["batch"] == 10


def test_trainer_refuses_a_validation_split_of_shards_and_bad_loader_settings(shard_index, toy_cascade):
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False, split_valid_from_train=True,
                            split_valid_fraction=0.1)
    with pytest.raises(ValueError, match="split_valid_from_train needs a map-style dataset"):
        trainer.add_train_dataset(ShardDataset(shard_index, 16), batch_size=4)
    with pytest.raises(ValueError, match="need num_workers >= 1"):
        trainer.add_train_dataset(ShardDataset(shard_index, 16), batch_size=4, persistent_workers=True)


def test_a_user_loader_can_skip_accelerate_prepare(toy_cascade):
    from imagen.trainer.streams import LoaderStream

    class TwoProcesses:
        num_processes = 2

        def prepare(self, loader):
            raise AssertionError("prepare was called")

    loader = torch.utils.data.DataLoader(torch.zeros(4, 3, 4, 4), batch_size=2)
    assert LoaderStream(loader, TwoProcesses(), prepare=False).loader is loader
    with pytest.raises(AssertionError, match="prepare was called"):
        LoaderStream(loader, TwoProcesses())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False)
    trainer.add_train_dataloader(loader, prepare=False)
    assert trainer.train_step() > 0


# ------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(("total", "global_batch", "world", "workers"), [(300, 12, 2, 2), (101, 8, 4, 3), (5, 6, 3, 4)])
def test_the_plan_partitions_every_epoch_among_processes_and_workers(total, global_batch, world, workers):
    from imagen.trainer.shard_order import window_order, worker_run

    batches = -(-total // global_batch)
    for epoch in range(3):
        covered = []
        for rank in range(world):
            made = []
            for worker in range(workers):
                run = worker_run(total, global_batch, world=world, rank=rank, num_workers=workers, worker=worker,
                                 epoch=epoch)
                assert run.length == len(run.batches) * (global_batch // world)
                assert all((epoch * batches + k) % workers == worker for k in run.batches)
                covered.extend(range(run.start, run.start + run.length))
                made.extend(run.batches)
            assert sorted(made) == list(range(batches))  # each batch of the process made by one worker
        assert sorted(covered) == list(range(batches * global_batch))  # positions >= total wrap around
    order = window_order(14, 7, 7, 3, (0, 1, 2), True)
    assert sorted(order) == list(range(14, 21)) and order == window_order(14, 7, 7, 3, (0, 1, 2), True)
