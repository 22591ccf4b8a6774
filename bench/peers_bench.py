"""Speed and memory of our U-Nets beside their peers: imagen-pytorch 2.1.0 and diffusers' UNet2DConditionModel.

Systems (each built from seeded random weights of its own; speed does not depend on the values,
and reference/test_unet.py proves ours computes the reference's numbers with the same weights):

- ``ours-base`` / ``reference-base``: the README's ``unet1`` scaled to bench size, the
  bench/reference.md keywords (``BASE``).
- ``ours-sr`` / ``reference-sr``: the README's ``unet2`` (super-resolution: low-res image
  conditioning, more resnet blocks in the deeper stages, attention only in the last) scaled alike (``SR``).
- ``diffusers-base``: ``UNet2DConditionModel`` of about the base's size: the same widths (32, 64,
  128), 2 resnet layers per level, cross-attention transformers at the two deeper levels (as our
  ``layer_attns``), 64-dim text context, 8-dim heads: 6,080,515 parameters against our 6,174,472.

Measures, on a batch of ``--batch`` ``--size`` px images with ``--text-len`` text tokens (half
masked), fp32, ``--threads`` threads: a training step (forward, MSE loss, backward, Adam), a
forward without gradients, one guided sampling step at cond_scale 5 (ours and the reference:
``forward_with_cond_scale``; diffusers: the usual classifier-free guidance, one forward of the
doubled batch with the null half's text zeroed, then ``null + 5 (cond - null)``).

Every (system, round) runs in its own subprocess, so that the peak memory is the process's own:
``peak RSS`` is ``ru_maxrss`` at the end of the measures minus the RSS just before them (model,
optimizer state and inputs already built), i.e. the working memory of the measures themselves.
Rounds interleave the systems (the order rotates each round) so that every system sees the same
machine load; the table gives medians over rounds and the speed-ups of ours over each peer.

    python bench/peers_bench.py --output bench/peers.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, True, True),
            layer_cross_attns=(False, True, True), text_embed_dim=64)
SR = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=(2, 4, 4), layer_attns=(False, False, True),
          layer_cross_attns=(False, False, True), text_embed_dim=64, lowres_cond=True)
DIFFUSERS = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 cross_attention_dim=64, attention_head_dim=8)
SYSTEMS = ("ours-base", "reference-base", "diffusers-base", "ours-sr", "reference-sr")
MEASURES = ("training step", "forward", "guided sampling step")
COND_SCALE = 5.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _imagen_measures(name: str, args):
    """The three measures of an imagen-style U-Net (ours or the reference's): bench/reference_bench.py's."""
    import torch

    if name.startswith("reference"):
        sys.path.insert(0, str(HERE.parent / "reference"))
        import ref_env

        ref_env.prepare()
        from imagen_pytorch import Unet
    else:
        from imagen.unets import Unet
    keywords = SR if name.endswith("sr") else BASE
    torch.manual_seed(0)
    unet = Unet(**keywords)
    b, n = args.batch, args.text_len
    x = torch.randn(b, 3, args.size, args.size)
    cond = dict(text_embeds=torch.randn(b, n, keywords["text_embed_dim"]),
                text_mask=torch.arange(n)[None].expand(b, -1) < n // 2)
    if keywords.get("lowres_cond"):
        cond.update(lowres_cond_img=torch.randn(b, 3, args.size, args.size), lowres_noise_times=torch.rand(b))
    sys.path.insert(0, str(HERE))
    import reference_bench  # its three measures (the same for ours and the reference)

    return unet, tuple(reference_bench.measures(unet, x, cond).values())


def _diffusers_measures(args):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=args.size, **DIFFUSERS)
    b, n = args.batch, args.text_len
    x, steps = torch.randn(b, 3, args.size, args.size), torch.randint(0, 1000, (b,))
    text = torch.randn(b, n, DIFFUSERS["cross_attention_dim"])
    mask = torch.arange(n)[None].expand(b, -1) < n // 2
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)

    def train_step():
        loss = (unet(x, steps, encoder_hidden_states=text, encoder_attention_mask=mask).sample - x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward():
        unet(x, steps, encoder_hidden_states=text, encoder_attention_mask=mask)

    @torch.no_grad()
    def guided_step():
        out = unet(torch.cat((x, x)), torch.cat((steps, steps)),
                   encoder_hidden_states=torch.cat((text, torch.zeros_like(text))),
                   encoder_attention_mask=torch.cat((mask, mask))).sample
        cond, null = out.chunk(2)
        return null + COND_SCALE * (cond - null)

    return unet, (train_step, forward, guided_step)


def child(name: str, args) -> dict:
    """Build one system, warm up, time each measure ``--reps`` times; the result as JSON-able dict."""
    import torch

    torch.set_num_threads(args.threads)
    unet, fns = _diffusers_measures(args) if name.startswith("diffusers") else _imagen_measures(name, args)
    params = sum(p.numel() for p in unet.parameters())
    before = _rss_bytes()
    for fn in fns:
        fn()  # warm-up (also allocates Adam's state)
    seconds = {}
    for measure, fn in zip(MEASURES, fns):
        runs = []
        for _ in range(args.reps):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        seconds[measure] = min(runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(system=name, params=params, seconds=seconds, peak_delta=peak - before, peak=peak)


def run(args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in args.systems}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for r in range(args.rounds):
        order = args.systems[r % len(args.systems):] + args.systems[:r % len(args.systems)]
        for name in order:
            cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--size", str(args.size),
                   "--text-len", str(args.text_len), "--threads", str(args.threads), "--reps", str(args.reps)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[name].append(result)
            print(f"round {r + 1}: {name} {result['seconds']} peak +{result['peak_delta'] / 2**20:.0f} MiB",
                  file=sys.stderr)
    return results


def table(results: dict[str, list[dict]], args) -> str:
    med = {name: {m: statistics.median(r["seconds"][m] for r in rs) for m in MEASURES} for name, rs in results.items()}
    mem = {name: statistics.median(r["peak_delta"] for r in rs) / 2**20 for name, rs in results.items()}
    params = {name: rs[0]["params"] for name, rs in results.items()}
    lines = [
        "# Our U-Nets beside imagen-pytorch 2.1.0 and diffusers 0.42.1 (CPU)",
        "",
        f"Batch {args.batch}, {args.size} px, {args.text_len} text tokens (half masked), fp32, {args.threads} "
        f"thread(s); each (system, round) in its own process, {args.rounds} interleaved rounds (order rotating), "
        f"best of {args.reps} repetitions per round, medians over rounds. Peak memory: the process's peak RSS "
        "during the measures minus its RSS just before them (model, Adam and inputs built). Systems and sizing: "
        "the docstring of bench/peers_bench.py.",
        f"Written by `OMP_NUM_THREADS={args.threads} python bench/peers_bench.py --output bench/peers.md` on a "
        "2-core machine shared with other jobs: read the ratios, not the seconds.",
        "",
        "| system | parameters | training step (s) | training images/s | forward (s) | guided step (s) "
        "| peak memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in results:
        s = med[name]
        lines.append(f"| {name} | {params[name]:,} | {s['training step']:.4f} | {args.batch / s['training step']:.2f} "
                     f"| {s['forward']:.4f} | {s['guided sampling step']:.4f} | {mem[name]:.0f} |")
    pairs = [("ours-base", "reference-base"), ("ours-base", "diffusers-base"), ("ours-sr", "reference-sr")]
    lines += ["", "Speed-ups of ours (peer time / our time; memory: our peak / the peer's):", "",
              "| ours vs peer | training step | forward | guided step | peak memory ratio |",
              "| --- | --- | --- | --- | --- |"]
    for ours, peer in pairs:
        if ours in med and peer in med:
            cells = " | ".join(f"{med[peer][m] / med[ours][m]:.2f}x" for m in MEASURES)
            lines.append(f"| {ours} vs {peer} | {cells} | {mem[ours] / mem[peer]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    text = table(run(args), args)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
