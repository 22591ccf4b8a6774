"""Where outputs go: file names from prompts, output folders, no silent overwrites, and the
sampled images (PNG) and videos (GIF plus a folder of PNG frames), each written atomically."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CliError


def prompt_filename(prompt: str, taken: set[str] | None = None) -> str:
    """The file stem for a prompt: runs of characters other than letters, digits and '-' become '_'
    ("a squirrel raiding the birdfeeder" -> "a_squirrel_raiding_the_birdfeeder"); at most 120
    characters; a stem already in ``taken`` gets a numeric suffix (and is added to it)."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "_", prompt).strip("_")[:120] or "sample"
    if taken is not None:
        base, n = stem, 1
        while stem in taken:
            stem, n = f"{base}_{n}", n + 1
        taken.add(stem)
    return stem


def make_folder(folder: Path, option: str) -> None:
    """Creates ``folder`` (and its parents) for an output, with a CliError naming ``option`` when it,
    or a folder above it, is a file."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == folder else f"is under {place}, which is a file"
                raise CliError(f"{option} {folder} {where}, not a folder")
            break
    folder.mkdir(parents=True, exist_ok=True)


def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """A CliError naming the first output that already exists, unless ``overwrite``."""
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CliError(f"{existing[0]} already exists{more}, from an earlier run; pass --overwrite to replace it "
                       "or choose another --output-dir")


def write_images(images, stems: list[str], output_dir: Path) -> list[Path]:
    from imagen.cascade import atomic_write, to_pil_images

    paths = []
    for picture, stem in zip(to_pil_images(images), stems):
        path = output_dir / f"{stem}.png"
        atomic_write(path, lambda p, picture=picture: picture.save(p, format="PNG"))
        paths.append(path)
    return paths


def write_videos(videos, stems: list[str], output_dir: Path) -> list[Path]:
    """Videos (B, C, F, H, W) in [0, 1] -> ``<stem>.gif`` plus ``<stem>/frame_000.png``..."""
    from imagen.cascade import atomic_write, to_pil_images

    paths = []
    for video, stem in zip(videos, stems):
        frames = to_pil_images(video.permute(1, 0, 2, 3))  # (F, C, H, W)
        frame_dir = output_dir / stem
        frame_dir.mkdir(exist_ok=True)
        for i, frame in enumerate(frames):
            atomic_write(frame_dir / f"frame_{i:03d}.png", lambda p, frame=frame: frame.save(p, format="PNG"))
        gif = output_dir / f"{stem}.gif"
        atomic_write(gif, lambda p, frames=frames: frames[0].save(
            p, format="GIF", save_all=True, append_images=frames[1:], duration=125, loop=0))
        paths.append(gif)
    return paths
