"""Helpers of the CLI tests (imported by the tests; conftest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from imagen.cli.main import main

TINY_UNET = dict(dim=8, dim_mults=[1, 2], layer_attns=False, layer_cross_attns=[False, True], attn_heads=2,
                 attn_dim_head=8, cond_dim=16, init_cross_embed=False, init_conv_kernel_size=3,
                 use_global_context_attn=False, attn_pool_text=False, attend_at_middle=False)


def tiny_config(tiny_t5: Path, image_folder: Path, checkpoints: Path, *, kind: str = "Imagen") -> dict:
    imagen = dict(kind=kind, unets=[TINY_UNET, TINY_UNET], image_sizes=[8, 16], text_encoder_name=str(tiny_t5),
                  text_embed_dim=16, cond_drop_prob=0.2)
    imagen.update(timesteps=4) if kind == "Imagen" else imagen.update(num_sample_steps=4)
    return dict(
        imagen=imagen,
        trainer=dict(lr=1e-3, warmup_steps=1, checkpoint_path=str(checkpoints), checkpoint_every=None),
        dataset=dict(folder=str(image_folder), batch_size=3),
    )


def run_cli(*args: str) -> int:
    return main(["--quiet", *args])
