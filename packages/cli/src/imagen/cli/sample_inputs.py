"""``imagen sample``'s inputs checked before anything runs: the device, the model path, and the
image files of img2img and inpainting."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def checked_device(text: str | None):
    """``--device`` as a torch device that exists here (None: the default, the CPU)."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {text!r} is not a torch device (for example cpu, cuda, cuda:1, mps)") from None
    backends = {"cpu": None, "cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None),
                "xpu": getattr(torch, "xpu", None)}
    if device.type not in backends:
        raise CliError(f"--device {text}: sampling runs on {', '.join(backends)} devices, not {device.type}")
    backend = backends[device.type]
    if backend is not None and not backend.is_available():
        raise CliError(f"--device {text}: this machine has no {device.type} device that torch can use")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (0 to "
                       f"{torch.cuda.device_count() - 1})")
    return device


def resolve_model_path(model: str) -> Path:
    from imagen.trainer import latest_checkpoint

    path = Path(model)
    if not path.exists():
        raise CliError(f"--model {model}: no such file or folder")
    if path.is_dir() and not (path / "config.json").is_file():
        newest = latest_checkpoint(path, include_reference=True)
        if newest is None:
            raise CliError(f"--model {model}: the folder holds no checkpoint (checkpoint.<steps>.safetensors) "
                           "and no save_pretrained cascade (config.json)")
        return newest
    return path


def image_file(option: str, path: str, mode: str = "RGB"):
    """The image at ``path`` as a float tensor in [0, 1]: (1, C, H, W), or (1, H, W) for mode "L"."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255
    except FileNotFoundError:
        raise CliError(f"{option} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"{option} {path}: not an image PIL can read ({error})") from None
    tensor = torch.from_numpy(array)
    return tensor[None] if mode == "L" else tensor.permute(2, 0, 1)[None]


def inpainting(args):
    """(image (1, 3, H, W), keep mask (1, H, W)) from --inpaint-image/--inpaint-mask, or None."""
    if (args.inpaint_image is None) != (args.inpaint_mask is None):
        raise CliError("--inpaint-image and --inpaint-mask go together: give both, or neither")
    if args.inpaint_image is None:
        return None
    image = image_file("--inpaint-image", args.inpaint_image)
    mask = image_file("--inpaint-mask", args.inpaint_mask, mode="L")
    if mask.shape[-2:] != image.shape[-2:]:
        raise CliError(f"--inpaint-mask {args.inpaint_mask} is {mask.shape[-1]}x{mask.shape[-2]} pixels, the "
                       f"--inpaint-image {image.shape[-1]}x{image.shape[-2]}: they must be of one size")
    return image, mask < 0.5  # black (kept) -> True: the cascade keeps where the mask is True
