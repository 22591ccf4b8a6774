"""Samplers: pure functions ``sampler(denoiser, x, sigmas, *, cond, generator, callback, progress, ...)``.

All work in the variance-exploding form x = x0 + sigma eps of Karras et al. 2022 (EDM), with the
probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma. ``x`` (B, C, H, W) or (B, C, F, H, W) is
the starting sample at level ``sigmas[0]`` (e.g. ``randn_like(x) * sigmas[0]``); ``sigmas`` is a
non-increasing 1-D tensor whose last entry may be 0 (a final step to the denoised estimate).
``callback`` gets a dict with i, x, sigma, sigma_next, denoised after every step. Every
model evaluation is one call of ``denoiser`` with the full batch: the NFE of each sampler is stated.
Samplers run under ``torch.no_grad()``; they validate ``sigmas`` once and read nothing back from the
device per step (the levels are host floats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import trange

from ._checks import check_sigmas
from .denoisers import Denoiser
from .draws import GeneratorArg, randn_like

__all__ = [
    "MIN_STEPS",
    "SAMPLERS",
    "check_sampler_steps",
    "get_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_unipc",
    "sampler_name",
]

Callback = Callable[[dict[str, Any]], None] | None


class _Run:
    """Shared plumbing: validated sigmas as floats, the denoiser call, the progress bar, callbacks."""

    def __init__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond, callback, progress: bool):
        self.sigmas = check_sigmas(sigmas).tolist()
        self.denoiser, self.cond, self.callback = denoiser, dict(cond or {}), callback
        self.batch, self.progress = x.shape[0], progress

    def steps(self):
        return trange(len(self.sigmas) - 1, disable=not self.progress, desc="sampling")

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        return self.denoiser(x, x.new_full((self.batch,), sigma), **self.cond)

    def report(self, i: int, x: Tensor, denoised: Tensor) -> None:
        if self.callback is not None:
            s = self.sigmas
            self.callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the
    Heun correction; the same as deterministic DDIM, Song et al. 2021, eq. 12). NFE = len(sigmas) - 1.
    """
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        d = (x - denoised) / sigma  # dx/dsigma
        x = x + (sigma_next - sigma) * d
        run.report(i, x, denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0,
    churn_steps: int | None = None, known: Tensor | None = None, mask: Tensor | None = None,
    resample_times: int = 1,
) -> Tensor:
    """Heun's 2nd-order method with EDM's stochastic churn (Karras et al. 2022, Algorithm 2).

    gamma = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma <= S_tmax, with N = ``churn_steps``
    (default: the steps in ``sigmas``; a cascade that skips steps keeps its full count, as the
    reference does). The churn noise is drawn on every step, as in the reference. With N nonzero
    sigmas, NFE = 2N - 1 (no correction on the final step to sigma = 0); S_churn = 0 makes it
    deterministic (Algorithm 1).

    Inpainting as imagen-pytorch's ElucidatedImagen: with ``known`` (like x, clean) and ``mask``
    (bool, broadcastable to x, True = keep) the churned input keeps ``known`` plus the churn noise
    in the masked region, and each step is redone ``resample_times`` times, re-noised by
    (sigma - sigma_next) z between the tries (except on the last step). The known region is not
    pasted at the end: the caller does that.
    """
    if (known is None) != (mask is None):
        raise ValueError("known and mask go together: give both for inpainting, or neither")
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    n = churn_steps if churn_steps is not None else len(run.sigmas) - 1
    tries = resample_times if known is not None else 1
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        # lines 4-6: raise the noise level to sigma_hat = sigma (1 + gamma) by adding fresh noise
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma + gamma * sigma
        for attempt in reversed(range(tries)):
            added = math.sqrt(sigma_hat**2 - sigma**2) * (S_noise * randn_like(x, generator))
            x_hat = x + added
            if known is not None:
                x_hat = torch.where(mask, known + added, x_hat)
            denoised = run.denoise(x_hat, sigma_hat)
            d = (x_hat - denoised) / sigma_hat  # line 7
            x_next = x_hat + (sigma_next - sigma_hat) * d  # line 8: Euler step
            if sigma_next > 0:  # lines 9-11: trapezoidal correction
                d_next = (x_next - run.denoise(x_next, sigma_next)) / sigma_next
                x_next = x_hat + 0.5 * (sigma_next - sigma_hat) * (d + d_next)
            x = x_next
            if known is not None and attempt > 0 and i < len(run.sigmas) - 2:  # re-noise and try again
                x = x + (sigma - sigma_next) * randn_like(x, generator)
        run.report(i, x, denoised)
    return x


def _ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2; eta = 1 matches the
    DDPM posterior variance sigma_next^2 (1 - sigma_next^2 / sigma^2) (Ho et al. 2020, eq. 7)."""
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2)))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """Ancestral Euler: an Euler ODE step down to sigma_down, then fresh noise of std sigma_up
    (Karras et al. 2022, Sec. 4 / Song et al. 2021 SDE view). NFE = len(sigmas) - 1."""
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up = _ancestral_split(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_up > 0:
            x = x + sigma_up * s_noise * randn_like(x, generator)
        run.report(i, x, denoised)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12 and 16) written for x = z / alpha, sigma = sigma_vp / alpha.

    x_next = x0_hat + sqrt(sigma_next^2 - s^2) eps_hat + s z with s = eta * (DDPM posterior std);
    eta = 0 is deterministic, eta = 1 is DDPM. NFE = len(sigmas) - 1.
    """
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x0_hat = run.denoise(x, sigma)
        eps_hat = (x - x0_hat) / sigma
        _, s = _ancestral_split(sigma, sigma_next, eta)
        x = x0_hat + math.sqrt(sigma_next**2 - s**2) * eps_hat
        if s > 0:
            x = x + s * randn_like(x, generator)
        run.report(i, x, x0_hat)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) for any number of steps: each step
    draws from the posterior q(x_next | x, x0 = x0_hat), which in the VE form is
    N(x0_hat + (sigma_next/sigma)^2 (x - x0_hat), sigma_next^2 (1 - (sigma_next/sigma)^2)).
    NFE = len(sigmas) - 1."""
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x0_hat = run.denoise(x, sigma)
        ratio2 = (sigma_next / sigma) ** 2
        x = x0_hat + ratio2 * (x - x0_hat)  # posterior mean
        if sigma_next > 0:
            x = x + sigma_next * math.sqrt(1 - ratio2) * randn_like(x, generator)
        run.report(i, x, x0_hat)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, in
    lambda = -log sigma: x_next = (sigma_next/sigma) x - expm1(-h) D, D a 2nd-order multistep
    extrapolation of the denoised values. First and final (to sigma = 0) steps are first order.
    NFE = len(sigmas) - 1."""
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    denoised_prev, h_prev = None, None
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)  # lambda_next - lambda
            D = denoised
            if denoised_prev is not None:
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev
            x = (sigma_next / sigma) * x - math.expm1(-h) * D
            h_prev = h
        denoised_prev = denoised
        run.report(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Sec. 5 and Appendix B, midpoint form):
    x_next = (sigma_next/sigma) e^{-eta h} x + (1 - e^{-(1+eta) h}) D
             + (1 - e^{-(1+eta) h}) (D - D_prev) / (2 r) + sigma_next sqrt(1 - e^{-2 eta h}) z.
    eta = 0 gives a deterministic 2M variant. NFE = len(sigmas) - 1."""
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    denoised_prev, h_prev = None, None
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + phi * denoised
            if denoised_prev is not None:
                r = h_prev / h
                x = x + phi / (2 * r) * (denoised - denoised_prev)
            if eta > 0:
                x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise * randn_like(x, generator)
            h_prev = h
        denoised_prev = denoised
        run.report(i, x, denoised)
    return x


def _phi(k: int, h: float) -> float:
    """phi_k(h) = int_0^h u^k e^{u - h} du, exactly (series for small h, else phi_k = h^k - k phi_{k-1})."""
    if h < 0.5:  # h^{k+1} k! sum_m (-h)^m / (k + m + 1)!
        return h ** (k + 1) * math.factorial(k) * sum((-h) ** m / math.factorial(k + m + 1) for m in range(25))
    value = -math.expm1(-h)
    for j in range(1, k + 1):
        value = h**j - j * value
    return value


def _integral_weights(nodes: list[float], h: float) -> list[float]:
    """Weights w_j with int_0^h e^{u - h} P(u) du = sum_j w_j P(nodes[j]) for every polynomial P of
    degree < len(nodes): the exact integrals of the Lagrange basis through ``nodes`` (u = lambda - lambda_i)."""
    weights = []
    for j, node in enumerate(nodes):
        others = [m for k, m in enumerate(nodes) if k != j]
        basis = np.poly(others) / np.prod([node - m for m in others]) if others else np.ones(1)
        # np.poly gives coefficients, highest power first
        weights.append(float(sum(c * _phi(p, h) for p, c in enumerate(basis[::-1]))))
    return weights


def _multistep(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond, callback, progress: bool, order: int) -> Tensor:
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    history: list[tuple[float, Tensor]] = []  # (lambda_j, D_j), most recent last
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        lam = -math.log(sigma)
        denoised = run.denoise(x, sigma)
        history = [*history[-(order - 1):], (lam, denoised)] if order > 1 else [(lam, denoised)]
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            w = _integral_weights([l - lam for l, _ in history], h)
            x = (sigma_next / sigma) * x + sum(wj * Dj for wj, (_, Dj) in zip(w, history))
        run.report(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    order: int = 3,
) -> Tensor:
    """Multistep exponential integrator of order ``order`` (1-4, default 3) in data prediction (DPM-Solver++ 3M,
    Lu et al. 2022, Sec. 4, with the exact integrals of DEIS, Zhang & Chen 2023, eq. 14).

    Exact solution of the ODE in lambda = -log sigma:
    x_next = (sigma_next/sigma) x + int_{lambda}^{lambda_next} e^{l - lambda_next} D(l) dl, with D the
    polynomial through the last ``order`` denoised values, integrated exactly. Warm-up steps use the
    orders available; the final step to sigma = 0 returns the denoised value. NFE = len(sigmas) - 1.
    """
    return _multistep(denoiser, x, sigmas, cond, callback, progress, order)


def _unipc_coefficients(rks: list[float], h: float) -> tuple[list[float], list[float], float, float]:
    """UniPC-bh2 coefficients for one step of size h in lambda (Zhao et al. 2023, Algorithm 2 and
    Appendix C with B(h) = e^{-h} - 1 in data prediction): (predictor rhos for the past
    differences, corrector rhos for those plus the new point, phi_1 = e^{-h} - 1, B(h)). ``rks``:
    the past points' (lambda_j - lambda_s) / h, most recent first."""
    p = len(rks) + 1
    hh = -h
    phi_1 = math.expm1(hh)
    b_h = phi_1  # bh2
    nodes = [*rks, 1.0]
    b, h_phi_k, factorial = [], phi_1 / hh - 1, 1
    for k in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = np.array([[r**k for r in nodes] for k in range(p)])  # row k: r^k of each node
    if p == 1:
        rhos_p = []
    elif p == 2:
        rhos_p = [0.5]
    else:
        rhos_p = np.linalg.solve(R[: p - 1, : p - 1], np.array(b[: p - 1])).tolist()
    rhos_c = [0.5] if p == 1 else np.linalg.solve(R, np.array(b)).tolist()
    return rhos_p, rhos_c, phi_1, b_h


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, cond: Mapping | None = None,
    generator: GeneratorArg = None, callback: Callback = None, progress: bool = False,
    order: int = 2, corrector: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), the bh2 variant
    in data prediction, in lambda = -log sigma.

    Predictor UniP-p: x_t = (sigma_t/sigma_s) x_s - phi_1 D_s - B(h) sum_k rho^p_k (D_k - D_s)/r_k with
    phi_1 = e^{-h} - 1 = B(h) and the last ``order`` denoised values (fewer while warming up).
    Corrector UniC: once D_t = D(x_t) is known, x_t is recomputed with it as one more node
    (rho^c from the same linear system), at no extra evaluation: the corrected x_t goes on, D_t
    (taken at the predicted x_t) joins the history. Order of accuracy order + 1 with the corrector.
    The final step to sigma = 0 returns the denoised value. NFE = len(sigmas) - 1.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    run = _Run(denoiser, x, sigmas, cond, callback, progress)
    history: list[tuple[float, Tensor]] = []  # (lambda_j, D_j), most recent last
    pending = None  # (x_t_ without the history terms, B(h), corrector rhos, differences) of the last step
    for i in run.steps():
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        lam = -math.log(sigma)
        denoised = run.denoise(x, sigma)
        if pending is not None and corrector:  # UniC at this point with the new evaluation
            base, b_h, rhos_c, diffs, d_s = pending
            correction = sum(r * d for r, d in zip(rhos_c[:-1], diffs)) + rhos_c[-1] * (denoised - d_s)
            x = base - b_h * correction
        history = [*history[-(order - 1):], (lam, denoised)] if order > 1 else [(lam, denoised)]
        if sigma_next == 0:
            x, pending = denoised, None
        else:
            h = math.log(sigma / sigma_next)
            past = history[:-1][::-1]  # most recent first
            rks = [(l_j - lam) / h for l_j, _ in past]
            diffs = [(d_j - denoised) / r for (_, d_j), r in zip(past, rks)]
            rhos_p, rhos_c, phi_1, b_h = _unipc_coefficients(rks, h)
            base = (sigma_next / sigma) * x - phi_1 * denoised
            x = base - b_h * sum(r * d for r, d in zip(rhos_p, diffs)) if rhos_p else base
            pending = (base, b_h, rhos_c, diffs, denoised)
        run.report(i, x, denoised)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
}

# The fewest steps (nonzero sigmas) at which a sampler stays accurate from sigma_max = 80
# (bench/diffusion.md): Heun's Euler predictor overshoots on the large first steps at NFE <= 9
# (5 steps), the 3-point extrapolation of dpmpp_3m at NFE 5 (0.5-0.6 sliced W2 against 0.12-0.15
# for dpmpp_2m); the bench has it sound from NFE 10.
MIN_STEPS = {"heun": 6, "dpmpp_3m": 10}


def check_sampler_steps(name: str, steps: int) -> None:
    """ValueError when ``steps`` is below the sampler's ``MIN_STEPS`` (where it diverges)."""
    key = sampler_name(name)
    limit = MIN_STEPS.get(key)
    if limit is not None and steps < limit:
        raise ValueError(
            f"steps={steps} is too few for the {key} sampler: it diverges below {limit} steps from a large "
            f"sigma_max; use steps >= {limit}, or a multistep sampler such as 'unipc' or 'dpmpp_2m' for few steps"
        )


# Names from k-diffusion, diffusers and web UIs, normalised (lower case, '++' -> 'pp', no separators).
_ALIASES = {
    "ancestral": "ddpm", "ddpmscheduler": "ddpm",
    "ddimscheduler": "ddim",
    "eulerdiscretescheduler": "euler", "keuler": "euler",
    "eulera": "euler_ancestral", "keulera": "euler_ancestral", "keulerancestral": "euler_ancestral",
    "eulerancestraldiscretescheduler": "euler_ancestral",
    "heundiscretescheduler": "heun", "kheun": "heun", "edm": "heun",
    "dpmsolvermultistepscheduler": "dpmpp_2m", "dpmsolverpp2m": "dpmpp_2m", "kdpmpp2m": "dpmpp_2m",
    "dpmpp2msde": "dpmpp_2m_sde", "kdpmpp2msde": "dpmpp_2m_sde", "sdedpmsolverpp": "dpmpp_2m_sde",
    "dpmpp3m": "dpmpp_3m", "kdpmpp3m": "dpmpp_3m", "deis": "dpmpp_3m",
    "unipcmultistepscheduler": "unipc", "unipcbh2": "unipc",
}


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower().replace("++", "pp") if ch.isalnum())


def sampler_name(name: str) -> str:
    """The key in ``SAMPLERS`` of the sampler called ``name`` (a key or a k-diffusion / diffusers /
    web-UI alias: "k_euler_a", "Euler a", "DPM++ 2M", "DPMSolverMultistepScheduler", ...)."""
    if not isinstance(name, str):
        raise TypeError(f"sampler name must be a str, got {type(name).__name__}")
    key = _normalise(name)
    by_key = {_normalise(k): k for k in SAMPLERS} | _ALIASES
    if key not in by_key:
        raise ValueError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)} (and their usual aliases)")
    return by_key[key]


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler called ``name``: one of ``SAMPLERS`` or an alias (see :func:`sampler_name`)."""
    return SAMPLERS[sampler_name(name)]
