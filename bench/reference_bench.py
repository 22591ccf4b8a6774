"""Side-by-side speed of our U-Net and imagen-pytorch 2.1.0's, built from the same keywords.

Three measures per system, interleaved over ``--rounds`` rounds so that both see the same machine
load: a training step (forward, backward, Adam), a forward without gradients, and one guided
sampling step (``forward_with_cond_scale`` at cond_scale 5: conditional and null predictions) as
each one's sampler runs it (:func:`sampling_step_cond`: ours with its text conditioning prepared).
Both U-Nets carry the same weights. The table reports medians and our speed-up (reference time /
our time). Run in the reference environment (``nox -s reference`` runs it, or any venv with
imagen-pytorch installed as noxfile.py does):

    python bench/reference_bench.py --output bench/reference.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reference"))
import ref_env

ref_env.prepare()

import imagen_pytorch  # noqa: E402

from imagen.unets import Unet  # noqa: E402

KEYWORDS = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=2,
                layer_attns=(False, True, True), layer_cross_attns=(False, True, True), text_embed_dim=64)


def build(size: int, batch: int, text_len: int):
    torch.manual_seed(0)
    reference = imagen_pytorch.Unet(**KEYWORDS)
    ours = Unet(**KEYWORDS)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(batch, 3, size, size)
    cond = dict(text_embeds=torch.randn(batch, text_len, KEYWORDS["text_embed_dim"]),
                text_mask=torch.arange(text_len)[None].expand(batch, -1) < text_len // 2)
    return {"ours": ours, "reference": reference}, x, cond


def sampling_step_cond(unet, cond: dict) -> dict:
    """``cond`` as each U-Net's sampler feeds a step: ours with the text conditioning prepared once per
    ``sample`` call (``Unet.text_conditioning``, what ``Imagen.sample`` does), the reference's with the raw
    text (its sampler recomputes the text conditioning at every step)."""
    prepare = getattr(getattr(unet, "unet", unet), "text_conditioning", None)  # unet: maybe peers_bench's _Compiled
    if prepare is None:
        return cond
    rest = {k: v for k, v in cond.items() if k not in ("text_embeds", "text_mask")}
    with torch.no_grad():
        return dict(rest, text_conditioning=prepare(cond["text_embeds"], cond["text_mask"]))


def measures(unet, x, cond):
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    times = torch.rand(x.shape[0])

    def train_step():
        loss = (unet(x, times, cond_drop_prob=0.1, **cond) - x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward():
        unet(x, times, **cond)

    step_cond = sampling_step_cond(unet, cond)

    @torch.no_grad()
    def guided_step():
        unet.forward_with_cond_scale(x, times, cond_scale=5.0, **step_cond)

    return {"training step": train_step, "forward": forward, "guided sampling step": guided_step}


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    unets, x, cond = build(args.size, args.batch, args.text_len)
    cases = {name: measures(unet, x, cond) for name, unet in unets.items()}
    seconds = {(name, m): [] for name in cases for m in cases[name]}
    for fn in (f for name in cases for f in cases[name].values()):
        fn()  # warm-up
    for _ in range(args.rounds):
        for measure in cases["ours"]:
            for name in cases:
                start = time.perf_counter()
                cases[name][measure]()
                seconds[name, measure].append(time.perf_counter() - start)
    rows = []
    for measure in cases["ours"]:
        ours = statistics.median(seconds["ours", measure])
        reference = statistics.median(seconds["reference", measure])
        rows.append(dict(measure=measure, ours=ours, reference=reference, speedup=reference / ours))
    return rows


def table(rows: list[dict], args) -> str:
    params = sum(p.numel() for p in Unet(**KEYWORDS).parameters())
    lines = [
        "# Our U-Net and imagen-pytorch 2.1.0's, same keywords, same weights",
        "",
        f"`Unet({', '.join(f'{k}={v}' for k, v in KEYWORDS.items())})`: {params:,} parameters in both.",
        f"Batch {args.batch}, {args.size} px, {args.text_len} text tokens (half masked), fp32, "
        f"{args.threads} thread(s), median of {args.rounds} interleaved rounds.",
        "Written by `python bench/reference_bench.py --output bench/reference.md` (also run by `nox -s reference`).",
        "",
        "| measure | ours (s) | reference (s) | speed-up |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['measure']} | {r['ours']:.4f} | {r['reference']:.4f} | {r['speedup']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args()
    text = table(run(args), args)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
