"""How one stage of a cascade is trained and sampled: the Gaussian (VP) process or EDM.

A stage sees its U-Net only as ``net(x_in, noise_cond, **kwargs) -> raw output`` (the noise
condition is the log-SNR for a Gaussian stage, EDM's c_noise for an EDM stage, as in the
reference). It knows the noise process, the loss, how the raw output becomes an x0 estimate, and
how its samplers walk from noise to data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import torch

from imagen.diffusion import (
    EDMDenoiser,
    VPDenoiser,
    VPX0Model,
    broadcast_mask,
    diffusion_loss,
    edm_loss_weight,
    edm_training_sigmas,
    get_noise_schedule,
    get_sampler,
    karras_sigmas,
    min_snr_loss_weight,
    prediction_target,
    q_sample,
    randn,
    sample_repaint,
    sample_training_times,
    sample_vp_ddpm,
    schedule_sigmas,
    spaced_sigmas,
    vp_time_grid,
    x0_from_prediction,
)

Model = Callable[..., torch.Tensor]


@attrs.frozen(kw_only=True)
class Inpainting:
    """What to keep while sampling a stage: ``known`` (B, C, [F,] H, W) in [-1, 1] at the stage's
    size and ``mask`` (B, H, W) or (B, F, H, W) bool at that size, True = keep."""

    known: torch.Tensor = attrs.field(eq=False)
    mask: torch.Tensor = attrs.field(eq=False)
    resample_times: int


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (x.ndim - 1))


@attrs.frozen(kw_only=True)
class GaussianStage:
    """A variance-preserving stage: continuous time t in [0, 1], log-SNR from ``noise_schedule``, the
    network predicts ``objective`` and is conditioned on the log-SNR."""

    noise_schedule: str
    objective: str
    loss_type: str
    min_snr_gamma: float | None
    sample_steps: int
    default_sampler: str = "ddpm"

    @property
    def schedule(self):
        return get_noise_schedule(self.noise_schedule)

    # ------------------------------------------------------------------------------- training

    def draw_noise_level(self, batch: int, generator, device) -> torch.Tensor:
        """Training times t ~ U[0, 1], (batch,)."""
        return sample_training_times(batch, generator=generator, device=device)

    def training_loss(self, net: Model, x0, *, noise_level, noise, self_condition=False) -> torch.Tensor:
        """The reference's p_losses for clean ``x0`` (B, C, ...) in [-1, 1], times ``noise_level``
        (B,) and ``noise`` (like x0): weighted regression of the objective, the weight being
        min(SNR, gamma) (or SNR without min-SNR) over what the objective's loss carries."""
        log_snr = self.schedule.log_snr(noise_level)
        x_t = q_sample(x0, log_snr, noise)
        if self_condition:  # a first, gradient-free estimate of x0 fed back (Chen et al. 2022)
            with torch.no_grad():
                estimate = x0_from_prediction(self.objective, net(x_t, log_snr), x_t, log_snr)
            net = functools.partial(net, self_cond=estimate.detach())
        prediction = net(x_t, log_snr)
        target = prediction_target(self.objective, x0, noise, log_snr)
        gamma = self.min_snr_gamma if self.min_snr_gamma is not None else float("inf")
        weight = min_snr_loss_weight(log_snr, gamma, self.objective)
        return diffusion_loss(prediction, target, self.loss_type, weight)

    # ------------------------------------------------------------------------------- sampling

    reference_schedule: str = "time"

    @staticmethod
    def on_time_grid(sampler: str, schedule: str) -> bool:
        """Whether ``sampler`` walks the reference's time grid (ancestral DDPM in VP variables)."""
        return sampler == "ddpm" and schedule == "time"

    def x0_model(self, net: Model, sampler: str, schedule: str = "time") -> Model:
        """The x0 estimate the ``sampler`` works with: ``(z_t, log_snr)`` for the time-grid DDPM,
        ``(x, sigma)`` (the denoiser contract) for the sigma samplers."""
        if self.on_time_grid(sampler, schedule):
            return VPX0Model(net, self.objective)
        return VPDenoiser(net, self.schedule, self.objective)

    def sampler_options(self, steps: int) -> dict:
        return {}

    def lowres_sampling_condition(self, times: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        """The low-res noise condition at sampling: its log-SNR, as in training."""
        return log_snr

    def levels(self, sampler: str, steps: int, device, schedule: str = "time", sigma_floor=None, **_) -> torch.Tensor:
        """The full grid of the ``sampler``: times from 1 to 0 (``schedule`` "time" with ddpm), EDM
        sigmas uniform in the schedule's time (other samplers on "time"), or sigmas spaced by
        ``schedule`` (karras, exponential, sech) from 80 to ``sigma_floor`` (default 0.002), then 0."""
        if self.on_time_grid(sampler, schedule):
            return vp_time_grid(steps, device)
        if schedule == "time":
            return schedule_sigmas(self.schedule, steps).to(device)
        return spaced_sigmas(schedule, steps, 0.002 if sigma_floor is None else sigma_floor, 80.0, device=device)

    def sample(self, x0_model: Model, shape, *, sampler: str, options: dict, levels: torch.Tensor, skip: int,
               init, inpaint: Inpainting | None, cond: dict, generator, callback, progress: bool,
               schedule: str = "time", refine: bool = False) -> torch.Tensor:
        """One stage from noise (plus ``init``) to data; returns the unclamped result in [-1, 1].

        The reference's start: ``init`` added to the noise of the first level, then ``skip`` levels
        skipped. ``refine``: ``init`` noised to ``levels[skip]``, where sampling starts (SDEdit)."""
        device = levels.device
        noise = randn(shape, generator, device=device)
        if not self.on_time_grid(sampler, schedule):
            start = init + levels[skip] * noise if refine else noise * levels[0]
            return _sample_sigmas(x0_model, start, sampler, options, levels[skip:], None if refine else init,
                                  inpaint, cond, generator, callback, progress)
        if refine:
            z = q_sample(init, self.schedule.log_snr(levels[skip].expand(shape[0])), noise)
        else:
            z = noise if init is None else noise + init
        known = {} if inpaint is None else dict(known=inpaint.known, mask=broadcast_mask(inpaint.mask, z),
                                                resample_times=inpaint.resample_times)
        return sample_vp_ddpm(x0_model, z, levels[skip:], schedule=self.schedule, cond=cond, generator=generator,
                              callback=callback, progress=progress, **known)


@attrs.frozen(kw_only=True)
class ElucidatedStage:
    """An EDM stage (Karras et al. 2022): preconditioned network, log-normal training noise, Karras
    sigmas and the stochastic Heun sampler by default."""

    sample_steps: int
    sigma_min: float
    sigma_max: float
    sigma_data: float
    rho: float
    P_mean: float
    P_std: float
    S_churn: float
    S_tmin: float
    S_tmax: float
    S_noise: float
    default_sampler: str = "heun"

    def draw_noise_level(self, batch: int, generator, device) -> torch.Tensor:
        """Training sigmas, ln sigma ~ N(P_mean, P_std^2), (batch,)."""
        return edm_training_sigmas(batch, self.P_mean, self.P_std, generator=generator, device=device)

    def training_loss(self, net: Model, x0, *, noise_level, noise, self_condition=False) -> torch.Tensor:
        """EDM's loss: lambda(sigma) * |D(x0 + sigma n, sigma) - x0|^2 with sigma = ``noise_level`` (B,)."""
        sigma = noise_level
        x = x0 + _expand(sigma, x0) * noise
        if self_condition:
            with torch.no_grad():
                estimate = EDMDenoiser(net, self.sigma_data)(x, sigma)
            net = functools.partial(net, self_cond=estimate.detach())
        denoised = EDMDenoiser(net, self.sigma_data)(x, sigma)
        return diffusion_loss(denoised, x0, "l2", edm_loss_weight(sigma, self.sigma_data))

    reference_schedule: str = "karras"

    def x0_model(self, net: Model, sampler: str, schedule: str = "karras") -> Model:
        return EDMDenoiser(net, self.sigma_data)

    def levels(self, sampler: str, steps: int, device, sigma_min=None, sigma_max=None, schedule: str = "karras",
               sigma_floor=None) -> torch.Tensor:
        """Sigmas from sigma_max to sigma_min (the stage's unless given; ``sigma_floor`` raises
        sigma_min to at least it), spaced by ``schedule``: "karras" (the stage's rho, the
        reference's), "exponential" or "sech"; then 0."""
        sigma_min = self.sigma_min if sigma_min is None else sigma_min
        sigma_max = self.sigma_max if sigma_max is None else sigma_max
        if sigma_floor is not None:
            sigma_min = max(sigma_min, sigma_floor)
        if schedule == "karras":
            return karras_sigmas(steps, sigma_min, sigma_max, rho=self.rho, device=device)
        if schedule == "time":
            raise ValueError("schedule='time' is the Gaussian stages' time grid; an ElucidatedImagen stage takes "
                             "'karras', 'exponential' or 'sech'")
        return spaced_sigmas(schedule, steps, sigma_min, sigma_max, device=device)

    def lowres_sampling_condition(self, times: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        """The low-res noise condition at sampling: the reference's ElucidatedImagen gives its U-Nets
        the raw time here (training gives the log-SNR); kept so that its checkpoints sample the same."""
        return times

    def sampler_options(self, steps: int) -> dict:
        """Keywords for the stochastic Heun sampler (EDM Algorithm 2; churn over all ``steps``)."""
        return dict(S_churn=self.S_churn, S_tmin=self.S_tmin, S_tmax=self.S_tmax, S_noise=self.S_noise,
                    churn_steps=steps)

    def sample(self, x0_model: Model, shape, *, sampler: str, options: dict, levels: torch.Tensor, skip: int,
               init, inpaint: Inpainting | None, cond: dict, generator, callback, progress: bool,
               schedule: str = "karras", refine: bool = False) -> torch.Tensor:
        """As ``GaussianStage.sample``, in sigmas: the start is ``noise * levels[0] (+ init)``, or
        ``init + levels[skip] * noise`` with ``refine``."""
        noise = randn(shape, generator, device=levels.device)
        if refine:
            x, init = init + levels[skip] * noise, None
        else:
            x = noise * levels[0]
        if inpaint is not None and sampler == self.default_sampler:  # the reference's Heun inpainting
            x = x if init is None else x + init
            return get_sampler(sampler)(x0_model, x, levels[skip:], cond=cond, generator=generator, callback=callback,
                                        progress=progress, known=inpaint.known, mask=broadcast_mask(inpaint.mask, x),
                                        resample_times=inpaint.resample_times, **options)
        return _sample_sigmas(x0_model, x, sampler, options, levels[skip:], init, inpaint, cond,
                              generator, callback, progress)


def _sample_sigmas(denoiser, x, sampler, options, sigmas, init, inpaint, cond, generator, callback, progress):
    """A sampler of ``imagen.diffusion.SAMPLERS`` (or RePaint when inpainting) from x at sigmas[0]."""
    if init is not None:
        x = x + init
    common = dict(cond=cond, generator=generator, callback=callback, progress=progress)
    if inpaint is not None:
        # jump_length=1: every step is redone resample_times times, as in the reference
        return sample_repaint(denoiser, x, sigmas, known=inpaint.known, mask=inpaint.mask,
                              resample_times=inpaint.resample_times, jump_length=1, **common)
    return get_sampler(sampler)(denoiser, x, sigmas, **common, **options)
