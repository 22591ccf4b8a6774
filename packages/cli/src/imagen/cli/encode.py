"""``imagen encode-text``: the dataset's captions into a text embedding cache (one process, or
each process of ``accelerate launch`` encoding its share, merged by the main process)."""

from __future__ import annotations

from pathlib import Path

from .config_command import read_config
from .data import dataset_from_config
from .errors import CliError


def cmd_encode_text(args) -> int:
    from imagen.text import T5Encoder, TextEmbeddingCache

    config = read_config(args)
    if not config.imagen.condition_on_text:
        raise CliError("the config's cascade does not condition on text: there is nothing to encode")
    output = args.output or config.dataset.text_embedding_cache
    if output is None:
        raise CliError("give --output or set dataset.text_embedding_cache in the config")
    folder = args.folder or config.dataset.folder
    if not Path(folder).is_dir():
        raise CliError(f"dataset folder {folder!r} not found")
    import attrs

    config = attrs.evolve(config, dataset=attrs.evolve(config.dataset, folder=folder))
    dataset = dataset_from_config(config, image_size=1, with_cache=False)
    if not dataset.has_captions:
        raise CliError(f"{folder!r} has no captions (<image>.txt files or metadata.jsonl)")
    import torch
    from accelerate import PartialState

    # one process, or each of `accelerate launch -m imagen.cli encode-text` (gloo on a machine without GPUs)
    state = PartialState(cpu=not torch.cuda.is_available())
    if (Path(output) / "index.json").exists() and not args.overwrite:
        raise CliError(f"{output} already holds a text embedding cache; pass --overwrite to replace it")
    dtype = getattr(torch, args.dtype or ("bfloat16" if state.device.type == "cuda" else "float32"))
    encoder = T5Encoder(config.imagen.text_encoder_name, batch_size=args.batch_size, device=state.device, dtype=dtype)
    options = dict(batch_size=args.batch_size, progress=not args.quiet and state.is_main_process,
                   store_dtype=getattr(torch, args.store_dtype) if args.store_dtype else None)
    if state.num_processes == 1:
        cache = TextEmbeddingCache.build(output, dataset.captions, encoder, overwrite=args.overwrite, **options)
    else:  # each process encodes its share into a part; the main process merges them
        TextEmbeddingCache.build(output, dataset.captions, encoder, overwrite=True,
                                 part=(state.process_index, state.num_processes), **options)
        state.wait_for_everyone()
        if state.is_main_process:
            cache = TextEmbeddingCache.merge(output, overwrite=args.overwrite, remove_sources=True)
        state.wait_for_everyone()
    if state.is_main_process:
        print(f"cached {len(cache)} captions in {output}")
    return 0
