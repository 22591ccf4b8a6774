"""RePaint inpainting (Lugmayr et al. 2022, "RePaint", Algorithm 1 with the jump schedule of Sec. 4.2)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_sigmas, check_steps
from .denoisers import Denoiser
from .draws import GeneratorArg, randn_like
from .samplers import Callback

__all__ = ["broadcast_mask", "repaint_plan", "sample_repaint"]


def repaint_plan(steps: int, resample_times: int = 10, jump_length: int = 10) -> list[int]:
    """Indices into a sigma sequence of ``steps + 1`` levels, in the order RePaint visits them.

    Starts at 0 (noisiest) and ends at ``steps``. A move i -> i + 1 is one denoising step; a move
    i -> i - jump_length re-noises back up. At every time t = steps - i that is a multiple of
    ``jump_length`` below ``steps - jump_length`` the last ``jump_length`` steps are redone,
    ``resample_times - 1`` times, so there are steps + (resample_times - 1) * jump_length * (jump points)
    denoising moves. ``resample_times = 1`` gives the plain 0, 1, ..., steps.
    """
    check_steps(steps)
    check_steps(resample_times, "resample_times")
    check_steps(jump_length, "jump_length")
    remaining = {t: resample_times - 1 for t in range(0, steps - jump_length, jump_length)}
    plan, t = [0], steps
    while t > 0:
        t -= 1
        plan.append(steps - t)
        if remaining.get(t, 0) > 0:
            remaining[t] -= 1
            t += jump_length
            plan.append(steps - t)
    return plan


def broadcast_mask(mask: Tensor, x: Tensor) -> Tensor:
    """A keep-mask (B, H, W) or, for videos (B, C, F, H, W), (B, F, H, W) shaped to broadcast
    against x: (B, 1, H, W) or (B, 1, [1|F], H, W). Raises ValueError on any other shape."""
    batch, spatial = x.shape[0], tuple(x.shape[-2:])
    if x.ndim == 4 and mask.ndim == 3 and (mask.shape[0], *mask.shape[1:]) == (batch, *spatial):
        return mask[:, None].bool()
    if x.ndim == 5 and tuple(mask.shape) == (batch, *spatial):
        return mask[:, None, None].bool()
    if x.ndim == 5 and tuple(mask.shape) == (batch, x.shape[2], *spatial):
        return mask[:, None].bool()
    accepted = f"({batch}, {spatial[0]}, {spatial[1]})"
    if x.ndim == 5:
        accepted += f" or ({batch}, {x.shape[2]}, {spatial[0]}, {spatial[1]})"
    raise ValueError(f"mask shape {tuple(mask.shape)} does not fit x of shape {tuple(x.shape)}; accepted: {accepted}")


@torch.no_grad()
def sample_repaint(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, known: Tensor, mask: Tensor,
    resample_times: int = 10, jump_length: int = 10, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
) -> Tensor:
    """RePaint: ancestral (DDPM) sampling where, after every step, the known region is replaced by
    the known image noised to the new level, and blocks of ``jump_length`` steps are redone
    ``resample_times`` times after re-noising (Lugmayr et al. 2022, Algorithm 1, lines 4-10).

    x (B, C, H, W) or (B, C, F, H, W) at level sigmas[0]; known: same shape as x; mask: (B, H, W) or
    (B, F, H, W) bool, True = keep ``known``. The known region is exactly ``known`` when the last
    sigma is 0. NFE = number of denoising moves in ``repaint_plan``.
    """
    s = check_sigmas(sigmas).tolist()
    if known.shape != x.shape:
        raise ValueError(f"known must have the shape of x {tuple(x.shape)}, got {tuple(known.shape)}")
    keep = broadcast_mask(mask, x)
    cond = dict(cond or {})
    plan = repaint_plan(len(s) - 1, resample_times, jump_length)
    moves = list(pairwise(plan))
    for k, (i, j) in enumerate(tqdm(moves, disable=not progress, desc="repaint")):
        if j < i:  # re-noise from sigma_i up to sigma_j: q(x_j | x_i) = N(x_i, sigma_j^2 - sigma_i^2)
            x = x + math.sqrt(s[j] ** 2 - s[i] ** 2) * randn_like(x, generator)
            continue
        x0_hat = denoiser(x, x.new_full((x.shape[0],), s[i]), **cond)
        ratio2 = (s[j] / s[i]) ** 2  # unknown part: DDPM posterior step (Algorithm 1, line 7)
        unknown = x0_hat + ratio2 * (x - x0_hat) + s[j] * math.sqrt(1 - ratio2) * randn_like(x, generator)
        known_t = known + s[j] * randn_like(x, generator)  # known part: q(x_j | x0 = known), line 5
        x = torch.where(keep, known_t, unknown)  # line 8
        if callback is not None:
            callback({"i": k, "x": x, "sigma": s[i], "sigma_next": s[j], "denoised": x0_hat})
    return x
