"""Denoiser wrappers, the argument checks and the VP sampler's arguments: documented defaults, cond
forwarded, sigma as float / 0-d / (B,), check boundaries and the parameter each error names (the
gaps mutation testing found)."""

import pytest
import torch

from imagen.diffusion import (
    EDMDenoiser,
    VPDenoiser,
    VPModelFromDenoiser,
    VPX0Model,
    as_sigma,
    edm_preconditioning,
    get_noise_schedule,
    posterior_mean_variance,
    sample_vp_ddpm,
    vp_time_grid,
)
from imagen.diffusion._checks import check_positive_sigma, check_sigmas, check_steps


def _net(x, noise_cond, *, offset):
    """A raw network that reads its conditioning."""
    return 0.5 * x + noise_cond.view(-1, *([1] * (x.ndim - 1))) + offset


def test_as_sigma_from_a_float_a_0d_tensor_and_a_batch_vector():
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert torch.equal(as_sigma(0.5, x), torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(as_sigma(torch.tensor(0.25), x), torch.full((3,), 0.25, dtype=torch.float64))
    vector = as_sigma(torch.tensor([1.0, 2.0, 3.0]), x)
    assert vector.dtype == torch.float64 and vector.tolist() == [1.0, 2.0, 3.0]
    assert as_sigma(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 2, device="meta")).device.type == "meta"
    with pytest.raises(ValueError, match=r"sigma must be a float or have shape \(3,\), got \(2,\)"):
        as_sigma(torch.ones(2), x)


@pytest.mark.parametrize("make", [
    lambda: EDMDenoiser(_net),
    lambda: VPDenoiser(_net, get_noise_schedule("cosine")),
    lambda: VPModelFromDenoiser(lambda x, sigma, offset: _net(x, sigma, offset=offset), get_noise_schedule("linear")),
])
def test_wrappers_forward_cond(make):
    x, sigma = torch.randn(2, 3), torch.tensor([0.5, 2.0])
    wrapped = make()
    assert not torch.allclose(wrapped(x, sigma, offset=torch.tensor(1.0)), wrapped(x, sigma, offset=torch.tensor(0.0)))


def test_wrapper_defaults_are_sigma_data_half_noise_objective_and_log_snr_condition():
    x, sigma = torch.randn(2, 3), torch.tensor([0.5, 2.0])
    assert torch.equal(EDMDenoiser(_net)(x, sigma, offset=0.1), EDMDenoiser(_net, 0.5)(x, sigma, offset=0.1))
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, 0.7)
    expected = c_skip[:, None] * x + c_out[:, None] * _net(c_in[:, None] * x, c_noise, offset=0.1)
    torch.testing.assert_close(EDMDenoiser(_net, 0.7)(x, sigma, offset=0.1), expected)
    schedule = get_noise_schedule("cosine")
    assert torch.equal(VPDenoiser(_net, schedule)(x, sigma, offset=0.1),
                       VPDenoiser(_net, schedule, "noise", "log_snr")(x, sigma, offset=0.1))
    d = lambda x, sigma, offset: x / (1 + sigma[:, None] ** 2) + offset  # noqa: E731
    assert torch.equal(VPModelFromDenoiser(d, schedule)(x, sigma, offset=0.1),
                       VPModelFromDenoiser(d, schedule, "noise", "log_snr")(x, sigma, offset=0.1))
    assert torch.equal(VPX0Model(_net)(x, sigma, offset=0.1), VPX0Model(_net, "noise")(x, sigma, offset=0.1))


@pytest.mark.parametrize("make", [
    lambda **kw: VPDenoiser(_net, get_noise_schedule("cosine"), **kw),
    lambda **kw: VPModelFromDenoiser(_net, get_noise_schedule("cosine"), **kw),
])
def test_vp_wrappers_name_the_bad_parameter(make):
    with pytest.raises(ValueError, match=r"objective must be one of \['noise', 'x_start', 'v'\], got 'eps'"):
        make(objective="eps")
    with pytest.raises(ValueError, match=r"noise_cond must be one of \['log_snr', 'time'\], got 'sigma'"):
        make(noise_cond="sigma")
    with pytest.raises(ValueError, match=r"objective must be one of \['noise', 'x_start', 'v'\], got 'eps'"):
        VPX0Model(_net, "eps")


def test_checks_boundaries_and_messages():
    check_steps(1)
    with pytest.raises(TypeError, match=r"steps must be an int >= 1, got 2\.0 of type float"):
        check_steps(2.0)
    with pytest.raises(TypeError, match=r"jump must be an int >= 1, got True of type bool"):
        check_steps(True, "jump")
    assert check_sigmas(torch.tensor([1.0, 0.0])).numel() == 2  # two entries are enough
    check_sigmas(torch.tensor([2.0, 1.0, 1.0, 0.0]))  # equal neighbours are allowed (non-increasing)
    with pytest.raises(TypeError, match=r"sigmas must be a 1-D torch\.Tensor, got list"):
        check_sigmas([1.0, 0.0])
    with pytest.raises(ValueError, match=r"sigmas must be finite, got \[inf, 0\.0\]"):
        check_sigmas(torch.tensor([float("inf"), 0.0]))
    with pytest.raises(ValueError, match=r"sigmas must be >= 0, got negative values \[-1\.0\]$"):
        check_sigmas(torch.tensor([2.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match=r"sigmas must be non-increasing"):
        check_sigmas(torch.tensor([3.0, 1.0, 2.0, 0.0]))
    check_positive_sigma(torch.zeros(3))  # 0 is a valid level
    with pytest.raises(ValueError, match=r"^sigma must be >= 0, got \[-1\.0, -1\.0, -1\.0, -1\.0, -1\.0, -1\.0, "
                                         r"-1\.0, -1\.0\]$"):
        check_positive_sigma(-torch.ones(10))


def _x0(z, log_snr, *, offset=0.0):
    return 0.5 * z + offset


def test_vp_ddpm_arguments():
    schedule, z = get_noise_schedule("cosine"), torch.randn(2, 3)
    assert vp_time_grid(3, device="meta").device.type == "meta"
    plain = sample_vp_ddpm(_x0, z, vp_time_grid(3), schedule=schedule, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, sample_vp_ddpm(_x0, z, vp_time_grid(3), schedule=schedule, resample_times=4,
                                             generator=torch.Generator().manual_seed(0)))  # no inpainting: one try
    shifted = sample_vp_ddpm(_x0, z, vp_time_grid(3), schedule=schedule, cond={"offset": 1.0},
                             generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(shifted, plain)
    with pytest.raises(ValueError, match=r"resample_times must be >= 1, got 0"):
        sample_vp_ddpm(_x0, z, vp_time_grid(3), schedule=schedule, resample_times=0)
    with pytest.raises(ValueError, match=r"known and mask go together: give both for inpainting, or neither"):
        sample_vp_ddpm(_x0, z, vp_time_grid(3), schedule=schedule, known=z)
    with pytest.raises(ValueError, match=r"times must be non-increasing \(from noisy to clean\), got \[0\.5, 1\.0"):
        sample_vp_ddpm(_x0, z, torch.tensor([0.5, 1.0, 0.0]), schedule=schedule)
    sample_vp_ddpm(_x0, z, torch.tensor([1.0, 0.5, 0.5, 0.0]), schedule=schedule)  # a repeated time is allowed


def test_vp_ddpm_reports_each_step_and_ends_noise_free(capsys):
    schedule, z = get_noise_schedule("linear"), torch.randn(2, 3)
    times, seen, estimates = vp_time_grid(4), [], []

    def x0(z, log_snr):
        estimates.append(_x0(z, log_snr))
        return estimates[-1]

    out = sample_vp_ddpm(x0, z, times, schedule=schedule, callback=seen.append,
                         generator=torch.Generator().manual_seed(1))
    assert capsys.readouterr().err == ""
    assert [(c["i"], c["t"], c["t_next"]) for c in seen] == [(i, times[i].item(), times[i + 1].item())
                                                            for i in range(4)]
    assert all(torch.equal(c["denoised"], e) for c, e in zip(seen, estimates, strict=True))
    assert torch.equal(seen[-1]["x"], out)
    levels = [schedule.log_snr(times[i].expand(2)) for i in (3, 4)]
    mean, _ = posterior_mean_variance(seen[-2]["x"], estimates[-1], *levels, check=False)
    assert torch.equal(out, mean)  # no noise on the step to t = 0
    sample_vp_ddpm(_x0, z, times, schedule=schedule, progress=True)
    assert "sampling" in capsys.readouterr().err
