"""imagen.diffusion: diffusion math for Imagen, independent of any network.

Everything works with a denoiser ``denoiser(x, sigma, **cond) -> x0_hat`` on images (B, C, H, W) or
videos (B, C, F, H, W) in the variance-exploding form x = x0 + sigma eps, sigma of shape (B,).
Schedules, the Gaussian (VP) and EDM processes, network wrappers, guidance and thresholding,
samplers and RePaint. Test oracles live in :mod:`imagen.diffusion.testing`.
"""

from .denoisers import Denoiser, EDMDenoiser, VPDenoiser, VPModelFromDenoiser, as_sigma
from .edm import edm_loss_weight, edm_preconditioning, edm_training_sigmas
from .gaussian import (
    LOSS_TYPES,
    OBJECTIVES,
    diffusion_loss,
    min_snr_loss_weight,
    noise_from_prediction,
    posterior_mean_variance,
    prediction_from_x0,
    prediction_target,
    q_sample,
    sample_training_times,
    v_from_prediction,
    x0_from_prediction,
)
from .guidance import classifier_free_guidance, dynamic_thresholding, quantile, static_clipping
from .inpainting import broadcast_mask, repaint_plan, sample_repaint
from .noise import randn_like
from .samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from .schedules import (
    SCHEDULES,
    NoiseSchedule,
    alpha_sigma_from_log_snr,
    edm_sigma_from_log_snr,
    exponential_sigmas,
    get_noise_schedule,
    karras_sigmas,
    log_snr_from_edm_sigma,
    schedule_sigmas,
    sech_sigmas,
    timesteps,
    uniform_sigmas,
)

__all__ = [
    "LOSS_TYPES",
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "Denoiser",
    "EDMDenoiser",
    "NoiseSchedule",
    "VPDenoiser",
    "VPModelFromDenoiser",
    "alpha_sigma_from_log_snr",
    "as_sigma",
    "broadcast_mask",
    "classifier_free_guidance",
    "diffusion_loss",
    "dynamic_thresholding",
    "edm_loss_weight",
    "edm_preconditioning",
    "edm_sigma_from_log_snr",
    "edm_training_sigmas",
    "exponential_sigmas",
    "get_noise_schedule",
    "get_sampler",
    "karras_sigmas",
    "log_snr_from_edm_sigma",
    "min_snr_loss_weight",
    "noise_from_prediction",
    "posterior_mean_variance",
    "prediction_from_x0",
    "prediction_target",
    "q_sample",
    "quantile",
    "randn_like",
    "repaint_plan",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_repaint",
    "sample_training_times",
    "schedule_sigmas",
    "sech_sigmas",
    "static_clipping",
    "timesteps",
    "uniform_sigmas",
    "v_from_prediction",
    "x0_from_prediction",
]
