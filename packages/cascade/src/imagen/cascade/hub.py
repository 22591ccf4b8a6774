"""Cascades on the Hugging Face Hub, offline-first, through ``huggingface_hub``'s own API.

- :func:`resolve_pretrained`: a local folder as given; a repo id (``"org/name"``) from the Hugging
  Face cache first (``snapshot_download(local_files_only=True)``, no network), and only when it is
  not cached, and neither ``local_files_only`` nor ``HF_HUB_OFFLINE`` forbids it, downloaded.
- :func:`push_to_hub`: ``save_pretrained`` into a temporary folder, a generated model card
  (:func:`model_card`: the config, training steps, a sample grid) beside it, one upload.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["PRETRAINED_FILES", "model_card", "push_to_hub", "resolve_pretrained"]

PRETRAINED_FILES = ("config.json", "model.safetensors")
"""What a cascade repo must hold (``save_pretrained``'s files); nothing else is downloaded."""

_SAMPLE_GRID = "samples.png"


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` is a Hub repo id of the form ``org/name`` (a bare ``name`` is taken as a path)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.count("/") != 1 or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_pretrained(name_or_path, *, revision: str | None = None, cache_dir=None,
                       local_files_only: bool = False) -> Path:
    """The folder holding a saved cascade: ``name_or_path`` itself when it is a folder, else the
    snapshot of the Hub repo ``name_or_path`` (``"org/name"``) at ``revision``.

    The cache (``cache_dir``, or huggingface_hub's: ``HF_HUB_CACHE`` / ``HF_HOME``) is read first
    without touching the network; a download happens only when the repo is not cached and neither
    ``local_files_only`` nor ``HF_HUB_OFFLINE=1`` forbids it. Anything that exists on disk, or is not
    of the form ``org/name``, is returned as a local path. A repo that cannot be found is a
    ``FileNotFoundError`` that says where it was looked for and how to provide it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    path = Path(name_or_path).expanduser()
    repo_id = str(name_or_path)
    if path.exists() or not _is_repo_id(repo_id):
        return path  # a local path (the loader says what is missing there)
    options = dict(revision=revision, cache_dir=cache_dir, allow_patterns=list(PRETRAINED_FILES))
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **options))
    except LocalEntryNotFoundError:
        pass
    if local_files_only or _offline():
        from huggingface_hub.constants import HF_HUB_CACHE

        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise FileNotFoundError(
            f"cascade {repo_id!r} is not in the Hugging Face cache {cache_dir or HF_HUB_CACHE} and {why}: download it "
            f"where the Hub can be reached (huggingface-cli download {repo_id}) and copy the cache here, point "
            "HF_HUB_CACHE at it, or pass a local folder written by save_pretrained"
        )
    try:
        return Path(snapshot_download(repo_id, **options))
    except Exception as error:  # an HTTP, network or repository error: one message naming the repo
        raise FileNotFoundError(f"cannot download cascade {repo_id!r} from the Hugging Face Hub: {error}") from None


def model_card(config: dict, *, repo_id: str, training_steps=None, sample_grid: str | None = None,
               sample_prompts=None) -> str:
    """A model card (README.md) for a cascade: how to load it, its training steps per unet, a sample
    grid, and its whole config as JSON."""
    task = "text-to-image" if config.get("condition_on_text", True) else "unconditional-image-generation"
    lines = [
        "---",
        "library_name: imagen",
        f"pipeline_tag: {task}",
        "tags:",
        "- imagen",
        "- diffusion",
        "---",
        "",
        f"# {repo_id}",
        "",
        f"An {config.get('kind', 'Imagen')} cascade of {len(config.get('unets', []))} stages "
        f"(image sizes {config.get('image_sizes')}).",
        "",
        "```python",
        "from imagen.cascade import Cascade",
        "",
        f'imagen = Cascade.from_pretrained("{repo_id}")  # from the Hugging Face cache first',
        "```",
        "",
    ]
    if training_steps is not None:
        steps = list(training_steps)
        lines += ["## Training", "", "| unet | steps |", "| --- | --- |"]
        lines += [f"| {i} | {n} |" for i, n in enumerate(steps, start=1)] + [""]
    if sample_grid is not None:
        lines += ["## Samples", "", f"![samples]({sample_grid})", ""]
        if sample_prompts:
            lines += ["Prompts: " + "; ".join(f"`{p}`" for p in sample_prompts), ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def push_to_hub(cascade, repo_id: str, *, token=None, private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload Imagen cascade", training_steps=None, sample_grid=None,
                sample_prompts=None):
    """Uploads ``cascade`` to the Hub repo ``repo_id`` (created if missing): ``config.json``,
    ``model.safetensors`` and a generated ``README.md`` model card; ``sample_grid`` (a PNG path, e.g.
    from ``ImagenTrainer.save_sample_grid``) goes with it as ``samples.png`` and is shown in the card
    with ``sample_prompts``. Returns huggingface_hub's ``CommitInfo``."""
    from huggingface_hub import HfApi

    from .persistence import save_pretrained

    if sample_grid is not None and not Path(sample_grid).is_file():
        raise FileNotFoundError(f"sample_grid {str(sample_grid)!r} is not a file")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="imagen-push-") as scratch:
        folder = Path(scratch) / "cascade"
        save_pretrained(cascade, folder)
        if sample_grid is not None:
            shutil.copyfile(sample_grid, folder / _SAMPLE_GRID)
        card = model_card(cascade.config.to_dict(), repo_id=repo_id, training_steps=training_steps,
                          sample_grid=_SAMPLE_GRID if sample_grid is not None else None, sample_prompts=sample_prompts)
        (folder / "README.md").write_text(card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision)
