"""``imagen config`` (write a default or preset config file), and reading a command's config:
its ``--config`` file (JSON or YAML) with the dotted ``--<section>.<field>`` flags applied."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError
from .outputs import make_folder


def cmd_config(args) -> int:
    from .config import default_config, preset_config

    if args.image_sizes and not args.preset:
        raise CliError("--image-sizes needs --preset (the default config's sizes are fixed)")
    try:  # before anything is written: a bad preset or size is one line
        config = preset_config(args.preset, args.image_sizes) if args.preset else default_config()
    except ValueError as error:
        raise CliError(f"--preset {args.preset}: {error}") from None
    path = Path(args.path)
    if path.is_dir():
        raise CliError(f"--path {path} is a folder; give a file name such as {path / 'imagen_config.json'}")
    if path.exists() and not args.force:
        raise CliError(f"{path} already exists; pass --force to replace it")
    make_folder(path.parent, "--path")
    config.write(path)
    print(f"wrote {path}")
    return 0


def read_config(args):
    """The command's config: its ``--config`` file (JSON or YAML) with the dotted flags applied."""
    from .config import CliConfig
    from .typed_config import apply_overrides, read_document

    return CliConfig.from_dict(apply_overrides(read_document(args.config), args.config_flags))


def print_config_fields(path: str) -> int:
    """Prints every ``--<section>.<field>`` flag (for the cascade kind of the file at ``path``, if any)."""
    from .typed_config import fields_help, read_document

    kind = (read_document(path).get("imagen") or {}).get("kind", "Imagen") if Path(path).is_file() else "Imagen"
    print(fields_help(kind))
    return 0
