"""GPU benchmark: one U-Net training step (bf16 autocast, channels-last, optionally compiled) with
images/s and model-FLOP utilisation, and guided sampling images/s of a two-stage cascade.

    python bench/gpu.py                          # dim 128, 64 px, batch 64, compiled, on cuda
    python bench/gpu.py --device cpu --dim 16 --size 16 --batch 2 --sample-size 32 --no-compile   # smoke

FLOPs of one training step (forward + backward) are counted once by ``torch.utils.flop_counter``
(matmuls and convolutions, the usual MFU convention); MFU = FLOPs x steps/s / peak. The peak is
``--peak-tflops`` or, for known GPUs, their dense bf16 figure. Prints one JSON object and, with
``--output``, appends a markdown row to that file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from imagen.cascade import Imagen
from imagen.unets import Unet

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks (TFLOP/s) by a substring of ``torch.cuda.get_device_name()``."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--size", type=int, default=64, help="training image size")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--sample-size", type=int, default=256, help="the cascade's final image size")
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--output", type=Path, default=None, help="a markdown file to append a row to")
    return parser.parse_args(argv)


def unet(dim: int, **extra) -> Unet:
    return Unet(dim=dim, cond_dim=dim * 4, dim_mults=(1, 2, 4, 8), num_resnet_blocks=2,
                layer_attns=(False, False, True, True), layer_cross_attns=(False, True, True, True),
                text_embed_dim=512, **extra)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(args, device: torch.device) -> dict:
    model = unet(args.dim).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    time_cond = torch.rand(args.batch, device=device, generator=generator)
    text = torch.randn(args.batch, 16, 512, device=device, generator=generator)
    mask = torch.ones(args.batch, 16, dtype=torch.bool, device=device)
    forward = torch.compile(model) if args.compile else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = (forward(x, time_cond, text_embeds=text, text_mask=mask).float() - x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # eager, once: the model's FLOPs, not the compiler's
        with torch.autocast(device.type, dtype=torch.bfloat16):
            (model(x, time_cond, text_embeds=text, text_mask=mask).float() - x).pow(2).mean().backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    result = dict(parameters=sum(p.numel() for p in model.parameters()), step_ms=seconds * 1e3,
                  train_images_per_s=args.batch / seconds, step_tflops=flops / 1e12,
                  achieved_tflops=flops / seconds / 1e12)
    if device.type == "cuda":
        result["train_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    peak = args.peak_tflops or _known_peak(device)
    if peak:
        result.update(peak_tflops=peak, mfu=result["achieved_tflops"] / peak)
    return result


def guided_sampling(args, device: torch.device) -> dict:
    base_size = args.sample_size // 4
    cascade = Imagen(unets=(unet(args.dim), unet(args.dim // 2, lowres_cond=True)),
                     image_sizes=(base_size, args.sample_size), text_embed_dim=512, cond_drop_prob=0.1,
                     timesteps=args.sample_steps)
    with torch.no_grad():  # a fresh U-Net outputs zeros: give the final convs weights
        for module in cascade.unets:
            module.final_conv.weight.normal_(0, 1e-3)
    cascade = cascade.to(device).eval()
    text = torch.randn(args.sample_batch, 16, 512, device=device)
    options = dict(text_embeds=text, cond_scale=5.0, dtype=torch.bfloat16, use_tqdm=False, generator=0,
                   sampler="dpmpp_2m", steps=args.sample_steps)
    cascade.sample(**{**options, "steps": 2})  # warm-up
    synchronize(device)
    start = time.perf_counter()
    cascade.sample(**options)
    synchronize(device)
    seconds = time.perf_counter() - start
    return dict(sample_size=args.sample_size, sample_images_per_s=args.sample_batch / seconds,
                sample_seconds=seconds)


def _known_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", dim=args.dim,
                  size=args.size, batch=args.batch, compiled=args.compile, torch=torch.__version__)
    result.update(training_step(args, device))
    result.update(guided_sampling(args, device))
    print(json.dumps(result, indent=1))
    if args.output is not None:
        mfu = f"{result['mfu']:.1%}" if "mfu" in result else "-"
        with open(args.output, "a") as file:
            file.write(f"| {result['device']} | {args.dim} | {args.size} | {args.batch} | {args.compile} | "
                       f"{result['train_images_per_s']:.1f} | {result['achieved_tflops']:.1f} | {mfu} | "
                       f"{result['sample_images_per_s']:.2f} at {args.sample_size} px |\n")
    return result


if __name__ == "__main__":
    main()
