"""Cascades by Hub repo id, offline-first: from a Hugging Face cache laid out with
huggingface_hub's own naming and read back by its own scanner; push_to_hub's upload and card."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet
from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.file_download import repo_folder_name

from imagen.cascade import Cascade, CheckpointError, Imagen
from imagen.cascade.hub import model_card, push_to_hub, resolve_pretrained

REVISION = "a" * 40


def tiny_cascade():
    imagen = Imagen(unets=[tiny_unet(0)], image_sizes=8, text_embed_dim=16, timesteps=2, condition_on_text=False)
    return randomize_cascade_(imagen)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache as huggingface_hub's default, with HF_HUB_OFFLINE=1; records every
    snapshot_download call."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    calls = []
    real = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    return cache, calls


def cache_repo(cache, repo_id, cascade, tmp_path):
    """Lays ``cascade`` out in the hub cache as ``repo_id`` (refs/main -> snapshots/<revision>/)."""
    saved = tmp_path / "saved"
    cascade.save_pretrained(saved)
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for path in saved.iterdir():  # blobs by content, snapshot entries linking to them, as downloads leave them
        blob = repo / "blobs" / f"{path.name}.blob"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(blob)
    return snapshot


def test_a_repo_id_loads_from_the_cache_offline(offline_cache, tmp_path):
    cache, calls = offline_cache
    imagen = tiny_cascade()
    snapshot = cache_repo(cache, "org/tiny-imagen", imagen, tmp_path)
    assert [r.repo_id for r in scan_cache_dir(cache).repos] == ["org/tiny-imagen"]  # huggingface_hub's own view
    loaded = Cascade.from_pretrained("org/tiny-imagen")
    assert loaded.config == imagen.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in imagen.state_dict().items())
    assert resolve_pretrained("org/tiny-imagen") == snapshot
    assert calls and all(c["local_files_only"] for c in calls)  # never a download


def test_a_missing_repo_fails_at_once_naming_it(offline_cache):
    _, calls = offline_cache
    with pytest.raises(FileNotFoundError, match=r"'org/absent' is not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        Cascade.from_pretrained("org/absent")
    assert all(c["local_files_only"] for c in calls)


def test_local_files_only_never_downloads(offline_cache, monkeypatch):
    _, calls = offline_cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        resolve_pretrained("org/absent", local_files_only=True)
    assert all(c["local_files_only"] for c in calls)


@pytest.mark.parametrize("name", ["model", "./org/name", "/abs/org/name", "a/b/c"])
def test_what_is_no_org_name_repo_id_stays_a_local_path(offline_cache, name):
    _, calls = offline_cache
    assert str(resolve_pretrained(name)) == str(Path(name))
    assert calls == []
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        Cascade.from_pretrained(name)


def test_a_local_folder_is_taken_as_it_is(tmp_path):
    imagen = tiny_cascade()
    imagen.save_pretrained(tmp_path / "model")
    assert resolve_pretrained(tmp_path / "model") == tmp_path / "model"


def test_push_to_hub_uploads_the_weights_and_a_model_card(tmp_path, monkeypatch):
    from PIL import Image

    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent["created"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        sent["files"] = sorted(p.name for p in folder_path.iterdir())
        sent["card"] = (folder_path / "README.md").read_text()
        sent["loaded"] = Cascade.from_pretrained(folder_path)
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    grid = tmp_path / "grid.png"
    Image.new("RGB", (4, 4)).save(grid)
    imagen = tiny_cascade()
    assert push_to_hub(imagen, "org/tiny", training_steps=[120], sample_grid=grid, sample_prompts=["a cat"]) == "commit"
    assert sent["created"][0] == "org/tiny"
    assert sent["files"] == ["README.md", "config.json", "model.safetensors", "samples.png"]
    assert sent["loaded"].config == imagen.config
    card = sent["card"]
    assert "| 1 | 120 |" in card and "![samples](samples.png)" in card and "`a cat`" in card
    config_json = card.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(config_json) == imagen.config.to_dict()


def test_push_to_hub_refuses_a_missing_sample_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match="sample_grid"):
        push_to_hub(tiny_cascade(), "org/tiny", sample_grid=tmp_path / "none.png")


def test_model_card_without_training_or_samples():
    card = model_card({"kind": "Imagen", "unets": [{}], "image_sizes": [8]}, repo_id="org/x")
    assert card.startswith("---\nlibrary_name: imagen") and "## Training" not in card and "## Samples" not in card
