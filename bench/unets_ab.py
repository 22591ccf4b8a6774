"""A/B of one change to imagen.unets: the U-Net of a git revision beside the working tree's, in ONE process.

Both U-Nets get the same seeded weights (the old one's state dict loaded into the new one, so a
changed architecture fails loudly), their outputs are compared (max absolute difference), then
their training steps (forward, MSE loss, backward, Adam) are timed in interleaved rounds, the order
alternating, in process CPU time: on a shared machine the ratio of one process's two timings is
what can be trusted, not either time. Sizing: bench/peers_bench.py's (batch 8, 32 px, 32 text
tokens, half masked).

    OMP_NUM_THREADS=1 python bench/unets_ab.py --base HEAD~1 --unet base --rounds 20
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers_bench import BASE, SR  # noqa: E402  (the sizing of the speed bench)

PACKAGE = "packages/unets/src/imagen/unets"


def load_revision(revision: str, into: Path):
    """imagen.unets as it was at ``revision``, imported under the name ``unets_at_revision``."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", revision, PACKAGE],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    root = into / PACKAGE
    spec = importlib.util.spec_from_file_location("unets_at_revision", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def inputs(keywords: dict, batch: int = 8, size: int = 32, text_len: int = 32) -> tuple:
    g = torch.Generator().manual_seed(0)
    x, times = torch.randn(batch, 3, size, size, generator=g), torch.rand(batch, generator=g)
    cond = dict(text_embeds=torch.randn(batch, text_len, 64, generator=g),
                text_mask=torch.arange(text_len)[None].expand(batch, -1) < text_len // 2)
    if keywords.get("lowres_cond"):
        cond.update(lowres_cond_img=torch.randn(batch, 3, size, size, generator=g),
                    lowres_noise_times=torch.rand(batch, generator=g))
    return x, times, cond


def training_step(unet: torch.nn.Module, x, times, cond):
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)

    def step():
        out = unet(x, times, cond_drop_prob=0.1, generator=torch.Generator().manual_seed(1), **cond)
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: Adam's state
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--unet", choices=("base", "sr"), default="base")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import imagen.unets as new

    keywords = SR if args.unet == "sr" else BASE
    x, times, cond = inputs(keywords)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.base, Path(tmp))
        torch.manual_seed(0)
        unets = {args.base: old.Unet(**keywords), "working tree": new.Unet(**keywords)}
        with torch.no_grad():
            torch.nn.init.normal_(unets[args.base].final_conv.weight, 0, 0.1)  # not the zero-output U-Net
            unets["working tree"].load_state_dict(unets[args.base].state_dict())
            outputs = [unet(x, times, **cond) for unet in unets.values()]
        print(f"max |old - new| output: {(outputs[0] - outputs[1]).abs().max().item():.3g}")
        steps = {name: training_step(unet, x, times, cond) for name, unet in unets.items()}
        seconds = {name: [] for name in steps}
        for r in range(args.rounds):
            for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
                start = time.process_time()
                steps[name]()
                seconds[name].append(time.process_time() - start)
    for name, values in seconds.items():
        print(f"{name}: training step min {min(values):.3f} s, median {statistics.median(values):.3f} s")
    old_s, new_s = seconds.values()
    print(f"speed-up of the working tree: {min(old_s) / min(new_s):.3f}x (minimum), "
          f"{statistics.median(old_s) / statistics.median(new_s):.3f}x (median)")


if __name__ == "__main__":
    main()
