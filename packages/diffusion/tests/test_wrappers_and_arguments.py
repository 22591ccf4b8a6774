"""Guidance and thresholding wrappers, the EDM and VP training draws, the draw helpers and the loss
helpers: documented defaults, what is forwarded, boundaries of every check and the parameter each
error names (the gaps mutation testing found)."""

import math

import pytest
import torch

from imagen.diffusion import (
    alpha_sigma_from_log_snr,
    classifier_free_guidance,
    diffusion_loss,
    dynamic_thresholding,
    edm_training_sigmas,
    min_snr_loss_weight,
    prediction_target,
    q_sample_from_to,
    rand,
    randint,
    sample_training_times,
    split_parallel,
    static_clipping,
    v_from_prediction,
)


def _model(x, sigma, *, text, per_sample=None, scalar=None, **_):
    """x0_hat reading every input: x, sigma (B,), text (B, 2), per_sample (B,), a 0-d scalar."""
    out = 0.5 * x + text.sum(-1).view(-1, 1) + sigma.view(-1, 1)
    if per_sample is not None:
        out = out + per_sample.view(-1, 1)
    return out if scalar is None else out * scalar


def test_guidance_repeats_per_sample_tensors_passes_scalars_and_casts_the_null():
    x, sigma, text = torch.randn(3, 4), torch.rand(3), torch.randn(3, 2)
    per_sample, scalar = torch.randn(3), torch.tensor(2.0)
    seen = {}

    def recording(x, sigma, **cond):
        seen.update({key: (value.shape, value.dtype) for key, value in cond.items()})
        return _model(x, sigma, **cond)

    guided = classifier_free_guidance(recording, 3.0, {"text": torch.zeros(1, 2, dtype=torch.float64)})
    out = guided(x, sigma, text=text, per_sample=per_sample, scalar=scalar)
    assert seen == {"text": ((6, 2), torch.float32), "per_sample": ((6,), torch.float32),
                    "scalar": ((), torch.float32)}
    cond = _model(x, sigma, text=text, per_sample=per_sample, scalar=scalar)
    uncond = _model(x, sigma, text=torch.zeros(3, 2), per_sample=per_sample, scalar=scalar)
    torch.testing.assert_close(out, cond + 2.0 * (cond - uncond))
    assert guided.cond_scale == 3.0


def test_guidance_at_scale_0_is_the_unconditional_output():
    x, sigma, text = torch.randn(3, 4), torch.rand(3), torch.randn(3, 2)
    out = classifier_free_guidance(_model, 0.0, {"text": torch.zeros(1, 2)})(x, sigma, text=text)
    torch.testing.assert_close(out, _model(x, sigma, text=torch.zeros(3, 2)))
    torch.testing.assert_close(classifier_free_guidance(_model, 0.5, {"text": torch.zeros(1, 2)})(x, sigma, text=text),
                               0.5 * (out + _model(x, sigma, text=text)))


def test_guidance_without_the_parallel_part_keeps_none_of_it_by_default():
    x, sigma, text = torch.randn(3, 4), torch.rand(3), torch.randn(3, 2)
    null = {"text": torch.zeros(1, 2)}
    cond, uncond = _model(x, sigma, text=text), _model(x, sigma, text=torch.zeros(3, 2))
    parallel, orthogonal = split_parallel(cond - uncond, cond)
    out = classifier_free_guidance(_model, 4.0, null, remove_parallel_component=True)(x, sigma, text=text)
    torch.testing.assert_close(out, cond + 3.0 * orthogonal)
    half = classifier_free_guidance(_model, 4.0, null, remove_parallel_component=True, keep_parallel_frac=0.5)
    torch.testing.assert_close(half(x, sigma, text=text), cond + 3.0 * (orthogonal + 0.5 * parallel))


def test_a_null_for_a_non_tensor_cond_is_a_type_error_naming_the_key():
    guided = classifier_free_guidance(_model, 2.0, {"text": torch.zeros(1, 2)})
    with pytest.raises(TypeError, match=r"cond\['text'\] has a null value but is a list, not a tensor"):
        guided(torch.randn(1, 4), torch.rand(1), text=[[0.0, 1.0]])


def _sigma_reader(x, sigma, *, offset=0.0):
    return x * 0 + 3.0 * sigma.view(-1, 1) + offset


@pytest.mark.parametrize("wrap", [dynamic_thresholding, static_clipping])
def test_thresholding_wrappers_forward_sigma_and_cond(wrap):
    x, sigma = torch.zeros(2, 5), torch.tensor([0.1, 0.2])
    expected = torch.tensor([[0.3] * 5, [0.6] * 5]) - 0.1
    torch.testing.assert_close(wrap(_sigma_reader)(x, sigma, offset=-0.1), expected)


def test_thresholding_defaults_and_boundaries():
    x = torch.linspace(-3, 3, 40).view(2, 20)
    identity = lambda x, sigma: x  # noqa: E731
    assert torch.equal(dynamic_thresholding(identity)(x, None), dynamic_thresholding(identity, 0.95)(x, None))
    assert torch.equal(static_clipping(identity)(x, None), x.clamp(-1, 1))
    assert torch.equal(dynamic_thresholding(identity, 1.0)(x, None), x / 3)  # the 100th percentile is the max
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"percentile must be in \(0, 1\], got {bad}"):
            dynamic_thresholding(identity, bad)
    with pytest.raises(ValueError, match=r"limit must be > 0, got 0"):
        static_clipping(identity, 0)


def test_edm_training_sigmas_are_exp_of_p_mean_plus_p_std_times_the_generators_normals():
    z = torch.randn(6, generator=torch.Generator().manual_seed(7))
    drawn = edm_training_sigmas(6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(drawn, (-1.2 + 1.2 * z).exp())  # EDM's defaults P_mean = -1.2, P_std = 1.2
    torch.testing.assert_close(edm_training_sigmas(6, 0.5, 0.3, generator=torch.Generator().manual_seed(7)),
                               (0.5 + 0.3 * z).exp())
    assert torch.equal(edm_training_sigmas(4, 0.2, 0.0), torch.full((4,), math.exp(0.2)))  # P_std = 0 is allowed
    assert edm_training_sigmas(1).shape == (1,)
    assert edm_training_sigmas(3, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"batch must be >= 1, got 0"):
        edm_training_sigmas(0)
    with pytest.raises(ValueError, match=r"P_std must be >= 0, got -0\.1"):
        edm_training_sigmas(2, P_std=-0.1)


def test_training_times_honour_generator_device_and_batch():
    assert torch.equal(sample_training_times(5, generator=torch.Generator().manual_seed(8)),
                       torch.rand(5, generator=torch.Generator().manual_seed(8)))
    assert sample_training_times(2, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"batch must be >= 1, got 0"):
        sample_training_times(0)


def test_draws_honour_generator_device_dtype_and_low():
    assert rand((3,), torch.Generator().manual_seed(9), device="meta").device.type == "meta"
    assert rand((3,), torch.Generator().manual_seed(9), dtype=torch.float64).dtype == torch.float64
    ints = randint(5, 9, (50,), torch.Generator().manual_seed(9))
    assert torch.equal(ints, torch.randint(5, 9, (50,), generator=torch.Generator().manual_seed(9)))
    assert ints.dtype == torch.int64 and int(ints.min()) >= 5
    assert randint(0, 3, (4,), torch.Generator(), device="meta").device.type == "meta"
    per_sample = randint(2, 7, (2, 3), [torch.Generator().manual_seed(s) for s in (1, 2)], device="meta")
    assert per_sample.device.type == "meta" and per_sample.dtype == torch.int64


def test_q_sample_from_to_is_the_documented_renoising():
    x, noise = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    l_from, l_to = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([-1.0, -3.0], dtype=torch.float64)
    a, s = (v.view(-1, 1) for v in alpha_sigma_from_log_snr(l_from))
    a_to, s_to = (v.view(-1, 1) for v in alpha_sigma_from_log_snr(l_to))
    expected = x * a_to / a + noise * (s_to * a - s * a_to) / a
    torch.testing.assert_close(q_sample_from_to(x, l_from, l_to, noise), expected, rtol=1e-12, atol=1e-12)


def test_loss_helpers_defaults_boundaries_and_named_errors():
    p, y = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(diffusion_loss(p, y), diffusion_loss(p, y, "l2"))
    with pytest.raises(ValueError, match=r"loss_type must be one of \['l1', 'l2', 'huber'\], got 'l3'"):
        diffusion_loss(p, y, "l3")
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) != target shape \(3, 2\)"):
        diffusion_loss(p, y.T)
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\), got \(3,\)"):
        diffusion_loss(p, y, weight=torch.ones(3))
    log_snr = torch.zeros(2)
    with pytest.raises(ValueError, match=r"gamma must be > 0, got 0"):
        min_snr_loss_weight(log_snr, 0, "noise")
    for call in (lambda: min_snr_loss_weight(log_snr, 5.0, "eps"), lambda: prediction_target("eps", p, y, log_snr),
                 lambda: v_from_prediction("eps", p, y, log_snr)):
        with pytest.raises(ValueError, match=r"objective must be one of \['noise', 'x_start', 'v'\], got 'eps'"):
            call()
    assert v_from_prediction("v", p, y, log_snr) is p  # a v prediction is returned as it is
