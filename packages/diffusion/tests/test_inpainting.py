import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.diffusion import karras_sigmas, repaint_plan, sample_repaint
from imagen.diffusion.testing import CountingDenoiser, GaussianMixture


@given(st.integers(1, 60), st.integers(1, 5), st.integers(1, 12))
def test_repaint_plan_walks_down_with_jumps_back_and_ends_at_the_last_level(steps, resample_times, jump_length):
    plan = repaint_plan(steps, resample_times, jump_length)
    assert plan[0] == 0 and plan[-1] == steps
    assert all(0 <= i <= steps for i in plan)
    moves = [b - a for a, b in itertools.pairwise(plan)]
    assert set(moves) <= {1, -jump_length}
    jump_points = len(range(0, steps - jump_length, jump_length))
    assert moves.count(-jump_length) == (resample_times - 1) * jump_points
    assert moves.count(1) == steps + (resample_times - 1) * jump_points * jump_length
    if resample_times == 1:
        assert plan == list(range(steps + 1))


def _two_blobs(shape):
    """Two equal components whose means are +1 / -1 everywhere: the known half tells which one."""
    d = torch.Size(shape).numel()
    means = torch.stack([torch.ones(d), -torch.ones(d)]).double()
    return GaussianMixture(means, 0.1, event_shape=shape)


@pytest.mark.parametrize(
    ("shape", "mask_shape"), [((1, 4, 4), (4, 4)), ((1, 3, 4, 4), (4, 4)), ((1, 3, 4, 4), (3, 4, 4))]
)
def test_inpainting_with_the_oracle_keeps_the_known_region_and_completes_consistently(shape, mask_shape):
    data, n = _two_blobs(shape), 64
    gen = torch.Generator().manual_seed(0)
    known = data.sample(n, gen).float()
    mask = torch.zeros(n, *mask_shape, dtype=torch.bool)
    mask[..., :2, :] = True  # keep the top half
    sigmas = karras_sigmas(20, 0.01, 20.0)
    counter = CountingDenoiser(data.denoiser)
    out = sample_repaint(counter, torch.randn(n, *shape, generator=gen) * 20, sigmas, known=known, mask=mask,
                         resample_times=3, jump_length=5, generator=gen)
    assert counter.nfe == len(repaint_plan(20, 3, 5)) - 1 - (3 - 1) * 3  # moves minus re-noising jumps
    keep = mask.reshape(n, 1, *mask.shape[1:]) if len(mask_shape) == 3 else mask[:, None, None] if len(shape) == 4 \
        else mask[:, None]
    keep = keep.expand_as(out)
    torch.testing.assert_close(out[keep], known[keep])  # exact: the last sigma is 0
    sign_known = known.flatten(1)[:, 0].sign()
    unknown = out.masked_fill(keep, 0).flatten(1).sum(1) / (~keep).flatten(1).sum(1)
    assert (unknown.sign() == sign_known).all()  # the fill comes from the known half's component
    assert ((unknown - sign_known).abs() < 0.2).all()


def test_mask_shape_mismatch_raises_naming_the_shape():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 5, 4\)"):
        sample_repaint(lambda x, s: x, x, karras_sigmas(3), known=x, mask=torch.ones(2, 5, 4, dtype=torch.bool))


def test_steps_below_one_raise():
    with pytest.raises(ValueError, match="resample_times must be >= 1, got 0"):
        repaint_plan(10, 0, 5)
