"""imagen.cascade: Imagen and ElucidatedImagen, cascades of U-Nets for text-to-image and text-to-video.

    from imagen.cascade import Imagen
    from imagen.unets import Unet

    imagen = Imagen(unets=(Unet(dim=32), Unet(dim=32)), image_sizes=(64, 256))
    loss = imagen(images, text_embeds=text_embeds, unet_number=1)
    images = imagen.sample(texts=["a whale breaching from afar"], cond_scale=3.0)
"""

from .cascade import Cascade, ElucidatedImagen, Imagen, build_unet
from .config import CascadeConfig, ElucidatedImagenConfig, ImagenConfig
from .container import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    Container,
    encode_container,
    fsync_folder,
    parse_checkpoint_json,
    partial_name,
    read_container,
    remove_stale_partials,
    replace_folder,
    tensor_digest,
    write_container,
)
from .hub import model_card, push_to_hub, resolve_pretrained
from .images import to_pil_images
from .persistence import (
    atomic_write,
    imagen_from_config_json,
    load_imagen_from_checkpoint,
    read_safetensors,
    weights_misfit,
)
from .presets import PRESETS, Recipe, preset, preset_config, small_fast
from .reference_checkpoint import (
    ReferenceCheckpoint,
    ReferenceCheckpointError,
    imagen_from_reference_checkpoint,
    is_torch_save,
    read_reference_checkpoint,
)
from .sampling import compile_options_of

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "PRESETS",
    "Cascade",
    "CascadeConfig",
    "CheckpointError",
    "Container",
    "ElucidatedImagen",
    "ElucidatedImagenConfig",
    "Imagen",
    "ImagenConfig",
    "Recipe",
    "ReferenceCheckpoint",
    "ReferenceCheckpointError",
    "atomic_write",
    "build_unet",
    "compile_options_of",
    "encode_container",
    "fsync_folder",
    "imagen_from_config_json",
    "imagen_from_reference_checkpoint",
    "is_torch_save",
    "load_imagen_from_checkpoint",
    "model_card",
    "parse_checkpoint_json",
    "partial_name",
    "preset",
    "preset_config",
    "push_to_hub",
    "read_container",
    "read_reference_checkpoint",
    "read_safetensors",
    "remove_stale_partials",
    "replace_folder",
    "resolve_pretrained",
    "small_fast",
    "tensor_digest",
    "to_pil_images",
    "weights_misfit",
    "write_container",
]
