"""``imagen convert``: an imagen-pytorch trainer checkpoint (.pt, read with weights_only) into ours."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def cascade_config_file(path: str):
    """A cascade config from a JSON file: an `imagen config` file, a bare cascade config, or a
    ``save_pretrained`` config.json document."""
    import json

    from imagen.cascade import CascadeConfig

    file = Path(path)
    if not file.is_file():
        raise CliError(f"--config {path}: no such file")
    try:
        document = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CliError(f"--config {path} is not a JSON file ({error})") from None
    except RecursionError:
        raise CliError(f"--config {path} is nested too deeply to be a config") from None
    if isinstance(document, dict) and isinstance(document.get("imagen"), dict):
        document = document["imagen"]
    elif isinstance(document, dict) and isinstance(document.get("config"), dict):
        document = document["config"]
    if not isinstance(document, dict):
        raise CliError(f"--config {path} must hold a JSON object (a cascade config)")
    return CascadeConfig.from_dict(document)


def cmd_convert(args) -> int:
    from imagen.cascade import is_torch_save, read_reference_checkpoint
    from imagen.trainer import checkpoint_from_reference, save_checkpoint

    source, output = Path(args.reference), Path(args.output)
    if not source.is_file():
        raise CliError(f"{args.reference}: no such file")
    with open(source, "rb") as handle:
        if not is_torch_save(handle.read(4)):
            raise CliError(f"{args.reference} is not a torch.save file (an imagen-pytorch checkpoint is one)")
    if output.exists() and not args.force:
        raise CliError(f"{args.output} already exists; pass --force to replace it")
    if output.resolve() == source.resolve():
        raise CliError("OUT must not be REF.pt itself")
    config = cascade_config_file(args.config) if args.config is not None else None
    ref = read_reference_checkpoint(source)
    cascade = (config or ref.config()).create()
    converted = checkpoint_from_reference(ref, cascade, config_json=cascade.config.to_json())
    if output.parent != Path() and not output.parent.is_dir():
        output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, converted.tensors, imagen_config=converted.imagen_config,
                    trainer_state=converted.trainer_state)
    state = converted.trainer_state
    print(f"converted {source} (imagen-pytorch {ref.version}, steps {state['steps']}, "
          f"EMA {'yes' if state['ema'] else 'no'}, optimizer state {'yes' if 'optimizers' in state else 'no'}) "
          f"-> {output}")
    return 0
