"""Diagnostic only: ``bench/cli_demo_tune.py`` (or, with ``--script``, another bench script) with every
``ChanRMSNorm`` replaced at run time by a group norm (8 groups over channels AND pixels, as the
pre-parity ``Block``'s GroupNorm), to test whether the per-pixel RMS norm of the reference 2.1.0
architecture is what stops the demo from learning position. The U-Net code is not changed.

    python bench/cli_demo_tune_groupnorm.py OUT steps=450 dataset_size=1000 prompts=6 ...
    python bench/cli_demo_tune_groupnorm.py --script bench/learning.py run --system recipe ...
"""
import runpy
import sys

import torch

from imagen.unets import layers


def forward(self, x, scale=None, shift=None):
    """x: (b, c, h, w) -> group-normalised, times gamma, then ``* scale + shift`` as ChanRMSNorm's FiLM."""
    c = x.shape[1]
    g = 8 if c % 8 == 0 else 1
    y = torch.nn.functional.group_norm(x, g) * self.gamma
    if scale is not None:
        y = y * scale
    if shift is not None:
        y = y + shift
    return y

layers.ChanRMSNorm.forward = forward
args = sys.argv[1:]
script = "bench/cli_demo_tune.py"
if args[:1] == ["--script"]:
    script, args = args[1], args[2:]
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
