"""Prompts files: one prompt per line, UTF-8 (a BOM is allowed), blank lines ignored, each line's
surrounding whitespace stripped. Read by ``imagen sample --prompts-file`` and for the training
sample grids' ``trainer.sample_prompts_file``."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def read_prompts_file(path: str | Path, option: str) -> list[str]:
    """The prompts in the file at ``path``, in file order; a CliError naming ``option`` and the file
    when it is missing, a folder, unreadable, not UTF-8 or holds no prompt."""
    file = Path(path)
    if file.is_dir():
        raise CliError(f"{option} {path} is a folder, not a prompts file")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{option} {path}: no such file") from None
    except OSError as error:
        raise CliError(f"{option} {path} cannot be read ({type(error).__name__}: {error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CliError(f"{option} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CliError(f"{option} {path} holds no prompts (one prompt per line; blank lines are ignored)")
    return prompts
