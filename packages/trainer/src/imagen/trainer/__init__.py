"""imagen.trainer: train Imagen cascades on accelerate, with EMA, image datasets and crash-safe
checkpoints (safetensors + JSON, written atomically, never unpickled)."""

from imagen.trainer.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from imagen.trainer.data import Dataset, EpochSampler, collate, pad_text_embeds, square_image
from imagen.trainer.hf_data import HFDataset, load_hf_dataset
from imagen.trainer.merge import merge_stage_checkpoints
from imagen.trainer.optim import LR_SCHEDULERS, WarmupCosine
from imagen.trainer.reference_import import checkpoint_from_reference
from imagen.trainer.sampling import grid_picture, image_grid, save_image_grid
from imagen.trainer.shards import ShardDataset, index_shards, write_shards
from imagen.trainer.tracking import Progress, flat_hyperparameters
from imagen.trainer.trainer import ImagenTrainer, NonFiniteTrainingError
from imagen.trainer.video_data import VideoDataset

__all__ = [
    "LR_SCHEDULERS",
    "CheckpointError",
    "Dataset",
    "EpochSampler",
    "HFDataset",
    "ImagenTrainer",
    "NonFiniteTrainingError",
    "Progress",
    "ShardDataset",
    "VideoDataset",
    "WarmupCosine",
    "checkpoint_from_reference",
    "collate",
    "flat_hyperparameters",
    "grid_picture",
    "image_grid",
    "index_shards",
    "latest_checkpoint",
    "load_checkpoint",
    "load_hf_dataset",
    "merge_stage_checkpoints",
    "pad_text_embeds",
    "prune_checkpoints",
    "save_checkpoint",
    "save_image_grid",
    "square_image",
    "write_shards",
]
