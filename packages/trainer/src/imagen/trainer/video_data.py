"""Video folders as datasets: animated GIFs and folders of frame images, with captions.

``VideoDataset(folder, image_size, frames)`` is :class:`imagen.trainer.Dataset` for videos: the same
caption rules (a sidecar ``<video stem>.txt``, a frame folder ``clip/`` taking ``clip.txt``, or a
``metadata.jsonl`` entry whose ``file_name`` is the video's path in the folder), the same skipping
and counting of bad samples (``skipped``, one warning), the same resize rule per frame
(:func:`imagen.trainer.data.square_image`) and one flip for all frames of a clip. Items are videos
``(C, F, H, W)`` in ``[0, 1]`` (dicts with ``images`` when captioned), so batches are
``(B, C, F, H, W)`` as :class:`ImagenTrainer` takes them.

The clip: ``frames`` consecutive frames. With ``clip="random"`` (the default) its first frame is drawn
from the item's augmentation seed, which :class:`EpochSampler` derives from the trainer's seed,
epoch and position, so a resumed run reads the same clips as an uninterrupted one; ``clip="first"``
takes the first ``frames`` frames. A video with fewer frames than ``frames`` is skipped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from imagen.diffusion import randint

from .data import _UNREADABLE, Dataset, _mix_seed, square_image

__all__ = ["VideoDataset"]

_FRAME_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")
_CLIP_RULES = ("random", "first")


class VideoDataset(Dataset):
    """Captioned videos in a folder (searched recursively), each a clip of ``frames`` frames resized
    and centre-cropped to ``image_size``.

    Args:
        folder: the folder holding the videos.
        image_size: side of the square frames, in pixels.
        frames: frames per clip (the ``F`` of the ``(C, F, H, W)`` items).
        exts: extensions of animated image files read as videos (case-insensitive; GIF by default).
        frame_exts: extensions of frame images; a folder holding such files is one video, its frames
            in file-name order (pass ``()`` for animated files only).
        clip: ``"random"`` (a window of ``frames`` consecutive frames drawn from the augmentation
            seed, or from the dataset's generator for a plain index) or ``"first"``.
        augment_horizontal_flip, convert_image_to, captions, text_embedding_cache, seed: as
            :class:`imagen.trainer.Dataset`.
        verify_videos: open every video at construction, count its frames and skip the unreadable
            and the too short ones.
    """

    _SAMPLE = "video"

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int,
        frames: int,
        exts: Sequence[str] = ("gif",),
        frame_exts: Sequence[str] = _FRAME_EXTS,
        *,
        clip: str = "random",
        augment_horizontal_flip: bool = True,
        convert_image_to: str | None = "RGB",
        captions: bool | str = "auto",
        text_embedding_cache=None,
        verify_videos: bool = True,
        seed: int = 0,
    ):
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1 (frames per clip), got {frames!r}")
        if clip not in _CLIP_RULES:
            raise ValueError(f"clip must be one of {list(_CLIP_RULES)}, got {clip!r}")
        self.frames, self.clip = frames, clip
        self.frame_exts = {e.lower().lstrip(".") for e in frame_exts}
        super().__init__(
            folder, image_size, exts=exts, augment_horizontal_flip=augment_horizontal_flip,
            convert_image_to=convert_image_to, captions=captions, text_embedding_cache=text_embedding_cache,
            verify_images=verify_videos, seed=seed,
        )

    # ---- finding and checking videos --------------------------------------------------------------
    def _sample_paths(self, exts: set[str]) -> list[Path]:
        """Animated files with one of ``exts``, and the sub-folders that hold frame images."""
        found = []
        for path in self.folder.rglob("*"):
            if path.is_file() and path.suffix.lower().lstrip(".") in exts:
                found.append(path)
            elif path.is_dir() and self._frame_files(path):
                found.append(path)
        return sorted(found)

    def _frame_files(self, folder: Path) -> list[Path]:
        """The frame images directly in ``folder``, in file-name order."""
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in self.frame_exts)

    def _unreadable_reason(self, path: Path) -> str | None:
        if path.is_dir():
            files = self._frame_files(path)
            for frame in files:
                reason = Dataset._unreadable_reason(frame)
                if reason is not None:
                    return f"frame {frame.name}: {reason}"
            count = len(files)
        else:
            try:
                with Image.open(path) as video:
                    count = getattr(video, "n_frames", 1)  # seeks through the frame headers
            except (*_UNREADABLE, EOFError) as error:
                return f"unreadable video ({type(error).__name__}: {error})"
        return self._too_short(count)

    def _too_short(self, count: int) -> str | None:
        if count < self.frames:
            return f"{count} frame(s), fewer than the {self.frames} of a clip (frames)"
        return None

    # ---- items ----------------------------------------------------------------------------------
    def _clip_start(self, count: int, aug_seed: int | None) -> int:
        """The clip's first frame in a video of ``count`` frames."""
        choices = count - self.frames + 1
        if self.clip == "first" or choices == 1:
            return 0
        if aug_seed is not None:
            return _mix_seed(aug_seed, 1) % choices  # bit 0 of _mix_seed(aug_seed) is the flip
        return int(randint(0, choices, (), self._generator))

    def _load(self, path: Path, flip: bool, aug_seed: int | None) -> torch.Tensor:
        """The clip of the video at ``path``: floats in [0, 1], (C, F, H, W)."""
        size, mode = self.image_size, self.convert_image_to
        if path.is_dir():
            files = self._frame_files(path)
            start = self._clip_or_raise(len(files), aug_seed)
            clip = []
            for file in files[start: start + self.frames]:
                with Image.open(file) as frame:
                    frame.load()
                    clip.append(square_image(frame, size, mode, flip))
        else:
            try:
                with Image.open(path) as video:
                    start = self._clip_or_raise(getattr(video, "n_frames", 1), aug_seed)
                    clip = []
                    for index in range(start, start + self.frames):
                        video.seek(index)
                        clip.append(square_image(video, size, mode, flip))
            except EOFError as error:  # a truncated animation: skipped as unreadable
                raise OSError(f"truncated video ({error})") from None
        return torch.stack(clip, dim=1).float().div(255.0)  # (C, F, H, W)

    def _clip_or_raise(self, count: int, aug_seed: int | None) -> int:
        reason = self._too_short(count)
        if reason is not None:  # found at load time when verify_videos is off: skipped as unreadable
            raise ValueError(reason)
        return self._clip_start(count, aug_seed)
