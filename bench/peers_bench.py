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
- ``ours-base-compiled`` / ``ours-sr-compiled`` / ``diffusers-base-compiled``: the same U-Nets
  through ``torch.compile`` (inductor, default mode): the training step's forward and backward, the
  forward and the guided forward each compiled once. The first call of each measure (the build,
  minus one steady call) is reported apart as ``compile (s)``; inductor's on-disk cache
  (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_<user>``) makes later rounds' builds
  short, so the first round's build is the cold one.

Measures, on a batch of ``--batch`` ``--size`` px images with ``--text-len`` text tokens (half
masked), fp32, ``--threads`` threads: a training step (forward, MSE loss, backward, Adam), a
forward without gradients, one guided sampling step at cond_scale 5 as each system's sampler runs
it (ours and the reference: ``forward_with_cond_scale``, ours with its text conditioning prepared
once per ``sample`` call as ``Imagen.sample`` does, bench/reference_bench.py's ``sampling_step_cond``;
the reference's sampler recomputes it every step; diffusers: the usual classifier-free guidance, one forward of the
doubled batch with the null half's text zeroed, then ``null + 5 (cond - null)``).

Every (system, round) runs in its own subprocess, so that the peak memory is the process's own:
after the warm-up calls (Adam's state allocated, compiled systems built) the allocator's free memory
is returned to the system (``malloc_trim``) and the kernel's peak-RSS mark reset
(``/proc/self/clear_refs``); ``peak memory`` is the peak RSS during the measures minus the RSS
just before them, i.e. the working memory of the steps themselves (activations, gradients, the
guided step's doubled batch), without the compiler's own. ``tensor peak`` is the most tensor memory
live at once during one more call of each measure, above what was live before it (torch's CPU
allocation events, recorded by the profiler: the CPU analogue of CUDA's ``max_memory_allocated``,
free of the C library's heap fragmentation, which the RSS figure includes).
Rounds interleave the systems (the order rotates each round) so that every system sees the same
machine load; the table gives medians over rounds and the speed-ups of ours over each peer.

    python bench/peers_bench.py --output bench/peers.md
"""

from __future__ import annotations

import argparse
import json
import math
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
EAGER_SYSTEMS = ("ours-base", "reference-base", "diffusers-base", "ours-sr", "reference-sr")
COMPILED_SYSTEMS = ("ours-base-compiled", "diffusers-base-compiled", "ours-sr-compiled")
SYSTEMS = EAGER_SYSTEMS + COMPILED_SYSTEMS
DEFAULT_SYSTEMS = SYSTEMS
MEASURES = ("training step", "forward", "guided sampling step")
COND_SCALE = 5.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Frees the allocator's cached memory and resets the kernel's peak-RSS mark to the current RSS."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _tensor_peak_bytes(fns) -> int:
    """The most CPU tensor bytes live at once during one call of each of ``fns``, above those live before it.

    Reads the profiler's memory timeline (``prof._memory_profile()``, private: what the deprecated
    ``export_memory_timeline`` is built on; CPU allocations have no public counter like CUDA's)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    peak = 0
    for fn in fns:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:  # the memory timeline needs all three
            fn()
        live = 0
        for _, action, (key, _), size in prof._memory_profile().timeline:
            if key.device.type == "cpu" and action in (Action.CREATE, Action.DESTROY):
                live += size if action == Action.CREATE else -size
                peak = max(peak, live)
    return peak


class _Compiled:
    """A U-Net whose calls (and ``forward_with_cond_scale``) go through ``torch.compile``."""

    def __init__(self, unet):
        import torch

        self.unet = unet
        self.forward = torch.compile(unet)
        if hasattr(unet, "forward_with_cond_scale"):
            self.forward_with_cond_scale = torch.compile(unet.forward_with_cond_scale)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def parameters(self):
        return self.unet.parameters()


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
    keywords = SR if "-sr" in name else BASE
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

    if not name.endswith("compiled"):
        return unet, tuple(reference_bench.measures(unet, x, cond).values())
    train_step, _, guided_step = reference_bench.measures(_Compiled(unet), x, cond).values()
    return unet, (train_step, None, guided_step)  # the plain forward is not built (compile time)


def _diffusers_measures(name: str, args):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=args.size, **DIFFUSERS)
    compiled = name.endswith("compiled")
    net = torch.compile(unet) if compiled else unet
    b, n = args.batch, args.text_len
    x, steps = torch.randn(b, 3, args.size, args.size), torch.randint(0, 1000, (b,))
    text = torch.randn(b, n, DIFFUSERS["cross_attention_dim"])
    mask = torch.arange(n)[None].expand(b, -1) < n // 2
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)

    def train_step():
        loss = (net(x, steps, encoder_hidden_states=text, encoder_attention_mask=mask).sample - x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward():
        net(x, steps, encoder_hidden_states=text, encoder_attention_mask=mask)

    @torch.no_grad()
    def guided_step():
        out = net(torch.cat((x, x)), torch.cat((steps, steps)),
                   encoder_hidden_states=torch.cat((text, torch.zeros_like(text))),
                   encoder_attention_mask=torch.cat((mask, mask))).sample
        cond, null = out.chunk(2)
        return null + COND_SCALE * (cond - null)

    return unet, (train_step, None if compiled else forward, guided_step)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""What a measure's seconds count: wall-clock time, or the process's CPU time (all its threads: with one
thread the same as wall-clock on an idle machine, and nearly unchanged by other jobs on a loaded one)."""


def child(name: str, args) -> dict:
    """Build one system, warm up, time each measure ``--reps`` times; the result as JSON-able dict."""
    import torch

    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    unet, fns = _diffusers_measures(name, args) if name.startswith("diffusers") else _imagen_measures(name, args)
    params = sum(p.numel() for p in unet.parameters())
    first = {}
    measures = [(measure, fn) for measure, fn in zip(MEASURES, fns) if fn is not None]
    for measure, fn in measures:  # warm-up: allocates Adam's state, builds compiled graphs
        start = clock()
        fn()
        first[measure] = clock() - start
        print(f"{name}: first {measure} {first[measure]:.1f} s", file=sys.stderr, flush=True)
    _reset_peak_rss()
    before = _rss_bytes()
    seconds = {}
    for measure, fn in measures:
        runs = []
        for _ in range(args.reps):
            start = clock()
            fn()
            runs.append(clock() - start)
        seconds[measure] = min(runs)
    peak = _peak_rss_bytes()
    tensor_peak = _tensor_peak_bytes([fn for _, fn in measures])
    compile_seconds = sum(first[m] - seconds[m] for m in seconds) if name.endswith("compiled") else 0.0
    return dict(system=name, params=params, seconds=seconds, compile_seconds=compile_seconds,
                peak_delta=peak - before, peak=peak, tensor_peak=tensor_peak,
                peak_lifetime=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def run(args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in args.systems}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for r in range(args.rounds):
        order = args.systems[r % len(args.systems):] + args.systems[:r % len(args.systems)]
        for name in order:
            cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--size", str(args.size),
                   "--text-len", str(args.text_len), "--threads", str(args.threads), "--reps", str(args.reps),
                   "--clock", args.clock]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[name].append(result)
            print(f"round {r + 1}: {name} {result['seconds']} peak +{result['peak_delta'] / 2**20:.0f} MiB",
                  file=sys.stderr)
    return results


def _cell(value: float, spec: str, unit: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:{spec}}{unit}"


def table(results: dict[str, list[dict]], args) -> str:
    med = {name: {m: statistics.median(r["seconds"][m] for r in rs) if m in rs[0]["seconds"] else math.nan
                  for m in MEASURES} for name, rs in results.items()}
    mem = {name: statistics.median(r["peak_delta"] for r in rs) / 2**20 for name, rs in results.items()}
    tensor_mem = {name: statistics.median(r.get("tensor_peak", math.nan) for r in rs) / 2**20
                  for name, rs in results.items()}
    params = {name: rs[0]["params"] for name, rs in results.items()}
    compile_rounds = "; ".join(
        f"{name} " + " / ".join(f"{r['compile_seconds']:.0f}" for r in rs)
        for name, rs in results.items() if name.endswith("compiled") and "compile_seconds" in rs[0]) or "not recorded"
    lines = [
        "# Our U-Nets beside imagen-pytorch 2.1.0 and diffusers 0.42.1 (CPU)",
        "",
        f"Batch {args.batch}, {args.size} px, {args.text_len} text tokens (half masked), fp32, {args.threads} "
        f"thread(s); each (system, round) in its own process, {args.rounds} interleaved rounds (order rotating), "
        f"best of {args.reps} repetitions per round, medians over rounds; seconds of "
        f"{'the process CPU time' if args.clock == 'cpu' else 'wall-clock time'} (`--clock {args.clock}`). "
        "Peak memory: the process's peak RSS "
        "during the measures minus its RSS just before them (after the warm-up calls, the allocator trimmed and "
        "the peak mark reset: the steps' working memory); tensor peak: the most tensor memory live at once "
        "during one more call of each measure, above what was live before (the profiler's allocation events; "
        "CUDA's `max_memory_allocated` on a GPU). Compile: the first calls' extra time per round, cold "
        f"only while inductor's on-disk cache is empty ({compile_rounds}). Systems and sizing: the docstring of "
        "bench/peers_bench.py.",
        f"Written by `OMP_NUM_THREADS={args.threads} python bench/peers_bench.py {' '.join(args.command)}` on a "
        "2-core machine shared with other jobs: read the ratios, not the seconds.",
        "",
        "| system | parameters | training step (s) | training images/s | forward (s) | guided step (s) "
        "| peak memory (MiB) | tensor peak (MiB) | compile (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in results:
        s = med[name]
        built = results[name][0].get("compile_seconds") if name.endswith("compiled") else None
        built = "-" if built is None else f"{built:.0f}"
        lines.append(f"| {name} | {params[name]:,} | {s['training step']:.4f} | {args.batch / s['training step']:.2f} "
                     f"| {_cell(s['forward'], '.4f')} | {s['guided sampling step']:.4f} | {mem[name]:.0f} "
                     f"| {_cell(tensor_mem[name], '.0f')} | {built} |")
    pairs = [("ours-base", "reference-base"), ("ours-base", "diffusers-base"), ("ours-sr", "reference-sr"),
             ("ours-base-compiled", "reference-base"), ("ours-base-compiled", "diffusers-base"),
             ("ours-base-compiled", "diffusers-base-compiled"), ("ours-sr-compiled", "reference-sr")]
    lines += ["", "Speed-ups of ours (peer time / our time; memory: our peak / the peer's):", "",
              "| ours vs peer | training step | forward | guided step | peak memory ratio | tensor peak ratio |",
              "| --- | --- | --- | --- | --- | --- |"]
    for ours, peer in pairs:
        if ours in med and peer in med:
            cells = " | ".join(_cell(med[peer][m] / med[ours][m], ".2f", "x") for m in MEASURES)
            memory = f"{mem[ours] / mem[peer]:.2f} | {_cell(tensor_mem[ours] / tensor_mem[peer], '.2f')}"
            lines.append(f"| {ours} vs {peer} | {cells} | {memory} |")
    lines += ["", "Per-round ratios (peer time / our time in the same round):", "",
              "| ours vs peer | training step, each round | guided step, each round |", "| --- | --- | --- |"]
    for ours, peer in pairs:
        if ours in results and peer in results:
            cells = " | ".join(" / ".join(f"{p['seconds'][m] / o['seconds'][m]:.2f}"
                                          for o, p in zip(results[ours], results[peer]))
                               for m in ("training step", "guided sampling step"))
            lines.append(f"| {ours} vs {peer} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall-clock seconds, or the process's CPU seconds (one thread on a shared machine)")
    parser.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args()
    args.command = list(sys.argv[1:])
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    text = table(run(args), args)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
