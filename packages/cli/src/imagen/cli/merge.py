"""``imagen merge``: one cascade checkpoint from stages trained in separate runs."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def cmd_merge(args) -> int:
    from imagen.trainer import merge_stage_checkpoints

    output = Path(args.output)
    if output.exists() and not args.force:
        raise CliError(f"{args.output} already exists; pass --force to replace it")
    stages = {}
    for choice in args.stage:
        number, sep, path = choice.partition("=")
        if not sep or not number.strip().isdigit() or not path:
            raise CliError(f"--stage {choice!r}: expected N=PATH, e.g. --stage 2=runs/sr")
        stages[int(number)] = path
    if output.parent != Path() and not output.parent.is_dir():
        output.parent.mkdir(parents=True, exist_ok=True)
    chosen = merge_stage_checkpoints(output, args.sources, stages=stages)
    for number, source in chosen.items():
        print(f"unet {number} <- {source}")
    print(f"merged -> {output}")
    return 0
