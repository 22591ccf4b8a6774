"""Benchmark of imagen.unets: training step (forward, backward, AdamW) and one sampling forward.

Configurations: the reference README's base U-Net (unet1) and super-resolution U-Net (unet2,
with lowres_cond=True as the cascade builds it) at 32 and 64 pixels, batch 8, 256 text tokens of
width 768 (the README's mock T5 embeddings). Each case runs in a fresh process so that its peak
resident memory (CPU) is its own; on CUDA the peak allocated memory is reported instead.

    python bench/unets_bench.py                      # all cases, markdown table
    python bench/unets_bench.py --device cuda --bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from imagen.unets import Unet

CONFIGS = {
    "base (unet1)": dict(dim=32, cond_dim=512, dim_mults=(1, 2, 4, 8), num_resnet_blocks=3,
                         layer_attns=(False, True, True, True), layer_cross_attns=(False, True, True, True)),
    "sr (unet2)": dict(dim=32, cond_dim=512, dim_mults=(1, 2, 4, 8), num_resnet_blocks=(2, 4, 8, 8),
                       layer_attns=(False, False, False, True), layer_cross_attns=(False, False, False, True),
                       lowres_cond=True),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(name: str, size: int, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps and one sampling forward of one configuration."""
    device, b = args.device, args.batch
    torch.manual_seed(0)
    unet = Unet(**CONFIGS[name], gradient_checkpointing=args.checkpoint).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=fmt)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=fmt)
    kwargs = dict(text_embeds=torch.randn(b, 256, 768, device=device),
                  text_mask=torch.arange(256, device=device)[None].expand(b, -1) < 32)
    if unet.lowres_cond:
        kwargs.update(lowres_cond_img=torch.randn_like(x), lowres_noise_times=torch.rand(b, device=device))
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = (unet(x, torch.rand(b, device=device), cond_drop_prob=0.1, **kwargs) - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, lazy init)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    train_s = (time.perf_counter() - start) / args.steps
    unet.eval()
    with torch.no_grad(), autocast:
        unet(x, torch.rand(b, device=device), **kwargs)
        _sync(device)
        start = time.perf_counter()
        unet(x, torch.rand(b, device=device), **kwargs)
        _sync(device)
    sample_s = time.perf_counter() - start
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(config=name, size=size, batch=b, params=sum(p.numel() for p in unet.parameters()),
                train_img_s=b / train_s, step_s=train_s, sample_forward_s=sample_s, peak_mib=peak_mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--case", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args)))
        return
    flags = [f"--device={args.device}", f"--batch={args.batch}", f"--steps={args.steps}"]
    flags += [f for f, on in (("--bf16", args.bf16), ("--channels-last", args.channels_last),
                              ("--checkpoint", args.checkpoint)) if on]
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, flags {flags[3:]}")
    print("| config | px | batch | params | train img/s | step s | sample fwd s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, *flags, "--case", name, str(size)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['config']} | {r['size']} | {r['batch']} | {r['params'] / 1e6:.1f}M | {r['train_img_s']:.2f} "
                  f"| {r['step_s']:.2f} | {r['sample_forward_s']:.3f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
