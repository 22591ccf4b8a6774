"""imagen.trainer: train Imagen cascades on accelerate, with EMA, image datasets and crash-safe
checkpoints (safetensors + JSON, written atomically, never unpickled)."""

from imagen.trainer.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from imagen.trainer.data import Dataset, EpochSampler, collate, pad_text_embeds
from imagen.trainer.optim import WarmupCosine
from imagen.trainer.reference_import import checkpoint_from_reference
from imagen.trainer.trainer import ImagenTrainer, NonFiniteTrainingError

__all__ = [
    "CheckpointError",
    "Dataset",
    "EpochSampler",
    "ImagenTrainer",
    "NonFiniteTrainingError",
    "WarmupCosine",
    "checkpoint_from_reference",
    "collate",
    "latest_checkpoint",
    "load_checkpoint",
    "pad_text_embeds",
    "prune_checkpoints",
    "save_checkpoint",
]
