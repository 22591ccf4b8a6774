"""DDPM ancestral sampling in the variance-preserving form, on a time grid (imagen-pytorch's loop).

The samplers of ``samplers.py`` work on EDM sigmas; this one walks the schedule's own times from
t = 1 (pure noise) to t = 0 in the VP variables z_t = alpha_t x0 + sigma_t eps, exactly as the
reference's ``p_sample_loop`` does (Ho et al. 2020, Algorithm 2, in the continuous-time form of
Kingma et al. 2021, eq. 33), with its RePaint-style inpainting (Lugmayr et al. 2022, jump length 1).

Its model is ``x0_model(z_t, log_snr, **cond) -> x0_hat`` (a VP network turned into an x0
estimate, thresholded as the stage wants): :class:`VPX0Model` builds one from a raw network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_choice, check_steps
from .draws import GeneratorArg, randn_like
from .gaussian import OBJECTIVES, posterior_mean_variance, q_sample, q_sample_from_to, x0_from_prediction
from .samplers import Callback
from .schedules import NoiseSchedule

__all__ = ["VPX0Model", "sample_vp_ddpm", "vp_time_grid"]


def vp_time_grid(steps: int, device=None) -> Tensor:
    """The reference's sampling times: ``steps + 1`` float32 values evenly spaced from 1 to 0."""
    check_steps(steps)
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


class VPX0Model:
    """A raw VP network ``model(z_t, log_snr, **cond) -> prediction of objective`` as an x0 estimate
    ``(z_t, log_snr, **cond) -> x0_hat``."""

    def __init__(self, model: Callable[..., Tensor], objective: str = "noise"):
        check_choice(objective, "objective", OBJECTIVES)
        self.model, self.objective = model, objective

    def __call__(self, z_t: Tensor, log_snr: Tensor, **cond) -> Tensor:
        return x0_from_prediction(self.objective, self.model(z_t, log_snr, **cond), z_t, log_snr)


@torch.no_grad()
def sample_vp_ddpm(
    x0_model: Callable[..., Tensor], z: Tensor, times: Tensor, *, schedule: NoiseSchedule,
    cond: Mapping | None = None, generator: GeneratorArg = None, callback: Callback = None,
    progress: bool = False, known: Tensor | None = None, mask: Tensor | None = None, resample_times: int = 1,
) -> Tensor:
    """Ancestral sampling z_t -> z_s ~ q(z_s | z_t, x0 = x0_hat) along ``times`` (decreasing, e.g.
    ``vp_time_grid(steps)[skip:]``); no noise is added on the step to t = 0.

    z (B, C, H, W) or (B, C, F, H, W) is the start at ``times[0]``. With ``known`` (the shape of z,
    clean) and ``mask`` (bool, broadcastable to z, True = keep ``known``) every step first pastes
    ``known`` noised to t into z, and is redone ``resample_times`` times, re-noising z_s back to t
    between the tries (the reference's inpainting). Noise is drawn in the reference's order: the
    known image's, the step's (also on the last step), the re-noising's. Returns z at ``times[-1]``
    (not clamped, known region not pasted). NFE = (len(times) - 1) * resample_times.
    """
    check_steps(resample_times, "resample_times")
    if (known is None) != (mask is None):
        raise ValueError("known and mask go together: give both for inpainting, or neither")
    cond = dict(cond or {})
    batch = z.shape[0]
    levels = times.to(device=z.device)  # float32 for the reference's numbers (vp_time_grid)
    tries = resample_times if known is not None else 1
    values = levels.tolist()  # one host read, not one per step
    if any(b > a for a, b in itertools.pairwise(values)):
        raise ValueError(f"times must be non-increasing (from noisy to clean), got {values}")
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling"):
        log_snr = schedule.log_snr(levels[i].expand(batch))
        log_snr_next = schedule.log_snr(levels[i + 1].expand(batch))
        last = values[i + 1] == 0
        for attempt in reversed(range(tries)):
            if known is not None:  # paste the known region at the current noise level
                z = torch.where(mask, q_sample(known, log_snr, randn_like(z, generator)), z)
            x0_hat = x0_model(z, log_snr, **cond)
            mean, variance = posterior_mean_variance(z, x0_hat, log_snr, log_snr_next, check=False)
            noise = randn_like(z, generator)
            z = mean if last else mean + (0.5 * variance.clamp(min=1e-20).log()).exp() * noise
            if known is not None and attempt > 0 and not last:  # re-noise s -> t and try again
                z = q_sample_from_to(z, log_snr_next, log_snr, randn_like(z, generator))
        if callback is not None:
            callback({"i": i, "x": z, "t": values[i], "t_next": values[i + 1], "denoised": x0_hat})
    return z
