"""Inpainting inside Heun (ElucidatedImagen's) and RePaint against exact oracles, mask shapes and the
step-count and order checks (the gaps mutation testing found)."""

import itertools

import pytest
import torch

from imagen.diffusion import (
    broadcast_mask,
    check_sampler_steps,
    karras_sigmas,
    repaint_plan,
    sample_heun,
    sample_repaint,
    sample_unipc,
    sampler_name,
)


def _elementwise(x, sigma):
    """The exact denoiser of N(0.3, 0.5^2) data per element: no pixel reads another."""
    s2 = sigma.double().view(-1, *([1] * (x.ndim - 1))) ** 2
    return (0.3 * s2 + 0.25 * x) / (0.25 + s2)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) * 10.0
    known = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    return x, known, mask


def test_heun_inpainting_without_churn_keeps_the_free_region_and_ends_the_kept_one_at_d_of_known():
    sigmas = karras_sigmas(6, 0.05, 10.0).double()
    x, known, mask = _inputs()
    out = sample_heun(_elementwise, x, sigmas, known=known, mask=mask)
    plain = sample_heun(_elementwise, x, sigmas)
    assert torch.equal(out[~mask], plain[~mask])  # an elementwise denoiser: the free region is plain Heun
    last = _elementwise(known, torch.full((2,), sigmas[-2].item(), dtype=torch.float64))
    assert torch.equal(out[mask], last[mask])  # each step restarts the kept region from known
    assert torch.equal(out, sample_heun(_elementwise, x, sigmas, known=known, mask=mask, resample_times=1))


def test_heun_inpainting_resampling_renoises_between_tries_but_not_after_the_last_step():
    sigmas = karras_sigmas(6, 0.05, 10.0).double()
    x, known, mask = _inputs(1)
    once = sample_heun(_elementwise, x, sigmas, known=known, mask=mask, generator=torch.Generator().manual_seed(2))
    thrice = sample_heun(_elementwise, x, sigmas, known=known, mask=mask, resample_times=3,
                         generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(once[~mask], thrice[~mask])
    last = _elementwise(known, torch.full((2,), sigmas[-2].item(), dtype=torch.float64))
    assert torch.equal(thrice[mask], last[mask])
    # without inpainting resample_times changes nothing
    plain = sample_heun(_elementwise, x, sigmas, resample_times=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain, sample_heun(_elementwise, x, sigmas))


def test_heun_known_and_mask_go_together():
    x, known, mask = _inputs()
    for given in ({"known": known}, {"mask": mask}):
        with pytest.raises(ValueError, match=r"known and mask go together: give both for inpainting, or neither"):
            sample_heun(_elementwise, x, karras_sigmas(3).double(), **given)


def test_repaint_keeps_the_marginal_sigma_after_every_move_on_a_point_mass():
    """Data at m (D = m) and known = m: after every denoising move i -> j (re-noising moves included
    before it), x - m ~ N(0, sigma_j^2) in the free region; the kept region is known noised to sigma_j."""
    m = 0.4
    sigmas = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    x = m + 4.0 * torch.randn(4, 1, 100, 100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = torch.zeros(4, 100, 100, dtype=torch.bool)
    mask[:, :, :50] = True
    seen, plan = [], repaint_plan(5, 3, 2)
    out = sample_repaint(lambda x, sigma: torch.full_like(x, m), x, sigmas, known=torch.full_like(x, m), mask=mask,
                         resample_times=3, jump_length=2, callback=seen.append,
                         generator=torch.Generator().manual_seed(4))
    assert len(seen) == sum(1 for a, b in itertools.pairwise(plan) if b > a)  # one report per denoising move
    for step in seen[:-1]:
        free, kept = step["x"][:, :, :, 50:] - m, step["x"][:, :, :, :50] - m
        assert free.var().item() == pytest.approx(step["sigma_next"] ** 2, rel=0.03)
        assert kept.var().item() == pytest.approx(step["sigma_next"] ** 2, rel=0.03)
    assert torch.equal(out, torch.full_like(x, m))


def test_repaint_defaults_progress_and_shape_errors(capsys):
    assert repaint_plan(30) == repaint_plan(30, 10, 10)
    with pytest.raises(ValueError, match=r"jump_length must be >= 1, got 0"):
        repaint_plan(5, 2, 0)
    x, known, mask = _inputs()
    mask = mask[:, 0]
    sigmas = karras_sigmas(12, 0.05, 10.0).double()
    g = torch.Generator().manual_seed(5)
    default = sample_repaint(_elementwise, x, sigmas, known=known, mask=mask, generator=g)
    explicit = sample_repaint(_elementwise, x, sigmas, known=known, mask=mask, resample_times=10, jump_length=10,
                              generator=torch.Generator().manual_seed(5))
    assert torch.equal(default, explicit) and capsys.readouterr().err == ""
    sample_repaint(_elementwise, x, karras_sigmas(2).double(), known=known, mask=mask, progress=True)
    assert "repaint" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"known must have the shape of x \(2, 1, 4, 4\), got \(2, 1, 4, 3\)"):
        sample_repaint(_elementwise, x, sigmas, known=known[..., :3], mask=mask)


def test_mask_shapes_accepted_and_named_in_the_error():
    image, video = torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 6, 4, 5)
    assert broadcast_mask(torch.ones(2, 4, 5), image).shape == (2, 1, 4, 5)
    assert broadcast_mask(torch.ones(2, 4, 5), video).shape == (2, 1, 1, 4, 5)
    assert broadcast_mask(torch.ones(2, 6, 4, 5), video).shape == (2, 1, 6, 4, 5)
    with pytest.raises(ValueError, match=r"mask shape \(2, 6, 4, 5\) does not fit x of shape \(2, 3, 4, 5\); "
                                         r"accepted: \(2, 4, 5\)$"):
        broadcast_mask(torch.ones(2, 6, 4, 5), image)
    with pytest.raises(ValueError, match=r"mask shape \(2, 5, 4\) does not fit x of shape \(2, 3, 6, 4, 5\); "
                                         r"accepted: \(2, 4, 5\) or \(2, 6, 4, 5\)$"):
        broadcast_mask(torch.ones(2, 5, 4), video)


def test_sampler_step_minimums_orders_and_name_types():
    check_sampler_steps("heun", 6)
    check_sampler_steps("dpmpp_2m", 1)
    with pytest.raises(ValueError, match=r"steps=5 is too few for the heun sampler: it diverges below 6 steps"):
        check_sampler_steps("k_heun", 5)
    with pytest.raises(ValueError, match=r"steps=9 is too few for the dpmpp_3m sampler"):
        check_sampler_steps("dpmpp_3m", 9)
    for order in (0, 4):
        with pytest.raises(ValueError, match=rf"order must be 1, 2 or 3, got {order}"):
            sample_unipc(_elementwise, torch.zeros(1, 2), karras_sigmas(3), order=order)
    with pytest.raises(TypeError, match=r"sampler name must be a str, got int"):
        sampler_name(3)
