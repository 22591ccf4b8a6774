"""The draw helpers: per-sample generators, the generator's device, argument errors."""

import pytest
import torch

from imagen.diffusion import first_generator, rand, randint, randn, randn_like


def test_per_sample_generators_give_each_sample_its_own_stream():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    x = randn((2, 5), gens)
    assert torch.equal(x[1], torch.randn(5, generator=torch.Generator().manual_seed(4)))
    u = rand((2,), [torch.Generator().manual_seed(s) for s in (3, 4)])
    assert u[0] == torch.rand((), generator=torch.Generator().manual_seed(3))


def test_one_generator_and_dtype_and_like():
    g = torch.Generator().manual_seed(0)
    x = randn_like(torch.zeros(2, 3, dtype=torch.float64), g)
    assert x.dtype == torch.float64
    assert torch.equal(x, torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    k = randint(0, 4, (100,), torch.Generator().manual_seed(1))
    assert k.dtype == torch.int64 and 0 <= int(k.min()) and int(k.max()) < 4


def test_first_generator():
    a, b = torch.Generator(), torch.Generator()
    assert first_generator([a, b]) is a and first_generator(a) is a and first_generator(None) is None


def test_wrong_generators_are_refused():
    with pytest.raises(ValueError, match=r"one torch\.Generator per batch element"):
        randn((3, 2), [torch.Generator()] * 2)
    with pytest.raises(TypeError, match="generator must be"):
        randn((2,), ["seed", "seed"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_generator_draws_on_cuda_for_a_cpu_result():
    g = torch.Generator(device="cuda").manual_seed(0)
    assert rand((4,), g, device="cpu").device.type == "cpu"
    assert randn((2, 3), [g, g], device="cuda").device.type == "cuda"


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde",
                                  "dpmpp_3m"])
def test_samplers_run_without_autograd(name):
    from imagen.diffusion import get_sampler, karras_sigmas

    seen = []

    def denoiser(x, sigma):
        seen.append(torch.is_grad_enabled())
        return x * 0.5

    x = torch.randn(2, 3, requires_grad=True)
    out = get_sampler(name)(denoiser, x, karras_sigmas(3, 0.1, 10.0), generator=torch.Generator().manual_seed(0))
    assert seen and not any(seen) and not out.requires_grad
