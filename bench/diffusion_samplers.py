"""Sampler accuracy on a Gaussian-mixture oracle (issue 2): sliced Wasserstein-2 vs NFE.

8 isotropic components, means ~ N(0, 0.5^2 I), stds ~ U(0.05, 0.2), unequal weights, d = 2 and 64;
the exact denoiser (imagen.diffusion.testing) makes the sampler the only source of error. Metric:
sliced W2 over 256 fixed random directions between N generated and N true samples; the noise floor
is the same metric between two independent true sets.

    python bench/diffusion_samplers.py [--n 20000] [--dims 2 64] [--out table.md] [--rows sech] [--no-ddpm]
"""

from __future__ import annotations

import argparse
import time

import torch

from imagen.diffusion import exponential_sigmas, get_sampler, karras_sigmas, schedule_sigmas, sech_sigmas
from imagen.diffusion.testing import random_mixture, sliced_wasserstein

NFES = (5, 10, 20, 50, 100)
# (label, sampler name, sigma schedule)
CONFIGS = [
    ("ddpm (karras)", "ddpm", "karras"),
    ("ddim (karras)", "ddim", "karras"),
    ("euler (karras)", "euler", "karras"),
    ("euler_ancestral (karras)", "euler_ancestral", "karras"),
    ("heun (karras)", "heun", "karras"),
    ("dpmpp_2m (karras)", "dpmpp_2m", "karras"),
    ("dpmpp_2m_sde (karras)", "dpmpp_2m_sde", "karras"),
    ("dpmpp_3m (karras)", "dpmpp_3m", "karras"),
    ("dpmpp_2m (exponential)", "dpmpp_2m", "exponential"),
    ("dpmpp_3m (exponential)", "dpmpp_3m", "exponential"),
    ("dpmpp_3m (cosine VP)", "dpmpp_3m", "cosine"),
    ("dpmpp_2m (sech)", "dpmpp_2m", "sech"),
    ("dpmpp_3m (sech)", "dpmpp_3m", "sech"),
    ("dpmpp_2m (sech, centre 0.25)", "dpmpp_2m", "sech0.25"),
    ("unipc (karras)", "unipc", "karras"),
    ("unipc (sech)", "unipc", "sech"),
    ("unipc (sech, sigma_min 0.05)", "unipc", "sech_min0.05"),
    ("dpmpp_2m (sech, sigma_min 0.05)", "dpmpp_2m", "sech_min0.05"),
    ("diffusers UniPC (scaled_linear)", "diffusers_unipc", "scaled_linear"),
    ("diffusers UniPC (linear)", "diffusers_unipc", "linear"),
]


def sigmas_for(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "karras":
        return karras_sigmas(steps, 0.002, 80.0)
    if schedule == "exponential":
        return exponential_sigmas(steps, 0.002, 80.0)
    if schedule == "sech":  # defaults: centre 0.5 (EDM's sigma_data), width 2
        return sech_sigmas(steps, 0.002, 80.0)
    if schedule == "sech_min0.05":  # the few-step default of the cascade: last nonzero level 0.05
        return sech_sigmas(steps, 0.05, 80.0)
    if schedule == "sech0.25":
        return sech_sigmas(steps, 0.002, 80.0, sigma_center=0.25)
    return schedule_sigmas("cosine", steps, 0.002, 80.0)


def diffusers_unipc(data, noise: torch.Tensor, nfe: int, beta_schedule: str) -> torch.Tensor:
    """diffusers' UniPCMultistepScheduler (its defaults: bh2, order 2, 1000 training steps) driving
    the exact denoiser: VP sample z = alpha x, x0 prediction."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(beta_schedule=beta_schedule, prediction_type="sample")
    scheduler.set_timesteps(nfe)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    z = noise.clone() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        alpha, sigma = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()
        x0 = data.denoiser(z / alpha, torch.full((z.shape[0],), float(sigma / alpha), dtype=z.dtype))
        z = scheduler.step(x0, t, z).prev_sample
    return z


def run(dim: int, n: int, seed: int = 0, rows: list[str] | None = None,
        ddpm: bool = True) -> tuple[float, dict[str, list[float]], float]:
    gen = torch.Generator().manual_seed(seed)
    data = random_mixture(8, dim, generator=gen)
    directions = torch.nn.functional.normalize(torch.randn(256, dim, generator=gen, dtype=torch.float64), dim=1)
    true, true2 = data.sample(n, gen), data.sample(n, gen)
    floor = sliced_wasserstein(true, true2, directions)
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    results = {}
    for label, name, schedule in CONFIGS:
        if rows and not any(r in label for r in rows):
            continue
        results[label] = []
        for nfe in NFES:
            steps = (nfe + 1) // 2 if name == "heun" else nfe  # Heun: 2N - 1 evaluations
            if name == "diffusers_unipc":
                out = diffusers_unipc(data, noise, nfe, schedule)
                results[label].append(sliced_wasserstein(out, true, directions))
                continue
            sigmas = sigmas_for(schedule, steps).double()
            out = get_sampler(name)(data.denoiser, noise * sigmas[0], sigmas,
                                    generator=torch.Generator().manual_seed(seed + 1))
            results[label].append(sliced_wasserstein(out, true, directions))
        print(dim, label, " ".join(f"{v:.4f}" for v in results[label]), flush=True)
    if not ddpm:
        return floor, results, float("nan")
    sigmas = schedule_sigmas("cosine", 1000, 0.002, 80.0).double()
    out = get_sampler("ddpm")(data.denoiser, noise * sigmas[0], sigmas, generator=torch.Generator().manual_seed(1))
    return floor, results, sliced_wasserstein(out, true, directions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--rows", nargs="+", default=None, help="only the rows whose label contains one of these")
    parser.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM reference")
    args = parser.parse_args()
    lines = []
    for dim in args.dims:
        start = time.perf_counter()
        floor, rows, ddpm1000 = run(dim, args.n, rows=args.rows, ddpm=not args.no_ddpm)
        lines += [f"### d = {dim} (N = {args.n}, noise floor {floor:.4f}, DDPM 1000 steps on cosine: "
                  f"{ddpm1000:.4f}; {time.perf_counter() - start:.0f} s)", "",
                  "| sampler (sigmas) | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|" + "---|" * len(NFES)]
        lines += [f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |" for label, values in rows.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
