"""``cascade-cli`` (alias ``imagen``): config, train, sample, encode-text, convert, merge and demo.

Every user mistake (missing file, bad config key or value, unet number out of range, a file that is
not a checkpoint or a checkpoint of another cascade) ends the command with one line on stderr,
``imagen <command>: error: ...``, and exit status 2; outputs are written atomically, so a failed
command leaves nothing half-written.

This module is the entry point only: the parser is in ``parser``, each command in its own module.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .config_command import cmd_config
from .convert import cmd_convert
from .demo_command import cmd_demo
from .encode import cmd_encode_text
from .errors import CliError, one_line
from .merge import cmd_merge
from .outputs import prompt_filename
from .parser import PROG, build_parser, parse_command_line
from .sample import DEFAULT_COND_SCALE, cmd_sample
from .train import DEFAULT_EPOCHS, cmd_train

__all__ = ["COMMANDS", "DEFAULT_COND_SCALE", "DEFAULT_EPOCHS", "PROG", "CliError", "build_parser", "main",
           "prompt_filename"]

COMMANDS = {"config": cmd_config, "train": cmd_train, "sample": cmd_sample, "encode-text": cmd_encode_text,
            "convert": cmd_convert, "merge": cmd_merge, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status (0, or 2 for
    a user error, reported as one line on stderr)."""
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("imagen.cli").setLevel(logging.WARNING if args.quiet else logging.INFO)
    from imagen.text import TextEncoderNotFoundError
    from imagen.trainer import CheckpointError

    try:
        return COMMANDS[args.command](args)
    except (CliError, CheckpointError, TextEncoderNotFoundError, OSError, ValueError, TypeError, KeyError) as error:
        print(f"{PROG} {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, not a user mistake: still one line, the traceback on request
        if os.environ.get("IMAGEN_CLI_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: internal error: {type(error).__name__}: {one_line(error)} "
              "(set IMAGEN_CLI_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
