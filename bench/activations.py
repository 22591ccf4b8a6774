"""What a training step keeps for its backward, and what it computes: our U-Nets beside their peers.

For each system (bench/peers_bench.py's sizing: batch 8, 32 px, 32 text tokens half masked) one
forward with gradients under ``torch.autograd.graph.saved_tensors_hooks`` sums the bytes of every
distinct storage saved for the backward (parameters excluded), grouped by the module that saved it;
``torch.utils.flop_counter`` counts the FLOPs of a training step (forward and backward) and of a
guided sampling step (the doubled batch). Both are deterministic: no timing, any machine load.
``--kernels`` splits each training step's profiled CPU time into the dense kernels (convolutions,
matrix products, SDPA) and the rest. ``--time`` adds an interleaved timing of the training steps of
all systems in ONE process (process CPU time, one thread; the order alternates every round), the
fairest speed comparison a shared machine allows.

    python bench/activations.py                      # ours-base, ours-sr, diffusers-base, reference-base
    python bench/activations.py --systems ours-base diffusers-base --time 8 --top 12
    python bench/activations.py --systems ours-base diffusers-base reference-base --kernels
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers_bench import BASE, DIFFUSERS, SR  # noqa: E402  (the sizing of the speed bench)

SYSTEMS = ("ours-base", "ours-sr", "diffusers-base", "reference-base", "reference-sr")


def build(name: str, batch: int = 8, size: int = 32, text_len: int = 32):
    """(module, forward() -> output tensor, guided() -> output) of one system on fixed random inputs."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    text = torch.randn(batch, text_len, 64)
    mask = torch.arange(text_len)[None].expand(batch, -1) < text_len // 2
    if name.startswith("diffusers"):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel(sample_size=size, **DIFFUSERS)
        steps = torch.randint(0, 1000, (batch,))

        def guided():
            both = unet(torch.cat((x, x)), torch.cat((steps, steps)),
                        encoder_hidden_states=torch.cat((text, torch.zeros_like(text))),
                        encoder_attention_mask=torch.cat((mask, mask))).sample
            cond, null = both.chunk(2)
            return null + 5.0 * (cond - null)

        return unet, lambda: unet(x, steps, encoder_hidden_states=text, encoder_attention_mask=mask).sample, guided
    if name.startswith("reference"):
        from imagen_pytorch import Unet  # main() prepared its offline environment
    else:
        from imagen.unets import Unet
    keywords = SR if name.endswith("-sr") else BASE
    unet = Unet(**keywords)
    times = torch.rand(batch)
    cond = dict(text_embeds=text, text_mask=mask)
    if keywords.get("lowres_cond"):
        cond.update(lowres_cond_img=torch.randn(batch, 3, size, size), lowres_noise_times=torch.rand(batch))
    return (unet, lambda: unet(x, times, cond_drop_prob=0.1, **cond),
            lambda: unet.forward_with_cond_scale(x, times, cond_scale=5.0, **cond))


def saved_for_backward(unet: torch.nn.Module, forward) -> tuple[int, collections.Counter]:
    """(total bytes, bytes by 'Parent/Module' class names) of the distinct non-parameter storages
    the forward saves for its backward."""
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    stack, seen, by_module = ["root"], set(), collections.Counter()
    hooks = []
    for module in unet.modules():
        hooks.append(module.register_forward_pre_hook(lambda m, args: stack.append(type(m).__name__)))
        hooks.append(module.register_forward_hook(lambda m, args, out: stack.pop() and None))  # None: keep `out`

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_module["/".join(stack[-2:])] += storage.nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        for hook in hooks:
            hook.remove()
    return sum(by_module.values()), by_module


def _count_cpu_attention() -> None:
    """torch's FLOP counter knows the CUDA SDPA kernels, not the CPU one: give it the same formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(forward)
    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(backward)


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_steps(systems: dict) -> dict:
    """A training step (forward, loss, backward, Adam) per system, Adam's state allocated."""
    steps = {}
    for name, (unet, forward, _) in systems.items():
        optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)

        def step(forward=forward, optimizer=optimizer):
            forward().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up: Adam's state
        steps[name] = step
    return steps


def timed_rounds(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Training-step CPU seconds of every system, ``rounds`` rounds in one process, order alternating."""
    seconds = {name: [] for name in steps}
    for r in range(rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            start = time.process_time()
            steps[name]()
            seconds[name].append(time.process_time() - start)
    return seconds


DENSE_KERNELS = ("conv", "mm", "scaled_dot_product")  # parts of ATen op names (mm: mm, addmm, bmm)


def kernel_split(step, repeats: int = 3, top: int = 6) -> tuple[float, float, list[tuple[float, str]]]:
    """(dense ms, other ms, the largest other ops [(ms, name)]) of one step's profiled self CPU time:
    dense = convolutions, matrix products and SDPA (the same ATen / oneDNN kernels in every system)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    dense, other = 0.0, []
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3 / repeats
        if any(kernel in event.key for kernel in DENSE_KERNELS):
            dense += ms
        elif ms > 0:
            other.append((ms, event.key))
    other.sort(reverse=True)
    return dense, sum(ms for ms, _ in other), other[:top]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS[:4]))
    parser.add_argument("--top", type=int, default=6, help="modules listed per system")
    parser.add_argument("--time", type=int, default=0, metavar="ROUNDS", help="also time the training steps")
    parser.add_argument("--kernels", action="store_true",
                        help="also split each training step's profiled CPU time: dense kernels vs the rest")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if any(name.startswith("reference") for name in args.systems):  # before transformers is first imported
        sys.path.insert(0, str(HERE.parent / "reference"))
        import ref_env

        ref_env.prepare()
    systems = {name: build(name) for name in args.systems}
    print("| system | parameters | saved for backward (MiB) | training step GFLOP | guided step GFLOP | "
          "largest savers (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, (unet, forward, guided) in systems.items():
        total, by_module = saved_for_backward(unet, forward)
        train = flops(lambda forward=forward: forward().square().mean().backward())
        with torch.no_grad():
            sample = flops(guided)
        unet.zero_grad(set_to_none=True)
        top = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in by_module.most_common(args.top))
        print(f"| {name} | {sum(p.numel() for p in unet.parameters()):,} | {total / 2**20:.1f} | {train / 1e9:.2f} "
              f"| {sample / 1e9:.2f} | {top} |")
    steps = training_steps(systems) if args.time or args.kernels else {}
    if args.time:
        seconds = timed_rounds(steps, args.time)
        print(f"\nTraining step, process CPU seconds over {args.time} interleaved rounds in one process "
              "(min / median):\n")
        for name, runs in seconds.items():
            print(f"- {name}: {min(runs):.3f} / {statistics.median(runs):.3f}")
    if args.kernels:
        print("\nTraining step, profiled self CPU time (ms, mean of 3 steps): convolutions, matrix products and "
              "SDPA (dense) vs everything else (other), with the largest other ops:\n")
        for name, step in steps.items():
            dense, other, largest = kernel_split(step)
            ops = ", ".join(f"{op.removeprefix('aten::')} {ms:.0f}" for ms, op in largest)
            print(f"- {name}: dense {dense:.0f} + other {other:.0f} ({ops})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
