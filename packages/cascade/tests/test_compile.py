"""Each stage's full x0 model (network + guidance + preconditioning + thresholding) traces as one
graph: torch.compile(fullgraph=True) succeeds and dynamo counts 0 graph breaks, so a sampling step
holds no host sync (.item(), bool(tensor), data-dependent Python branching)."""

import pytest
import torch
import torch._dynamo
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen

CASES = [(Imagen, "ddpm"), (Imagen, "dpmpp_2m"), (ElucidatedImagen, "heun")]


def _cascade(cls):
    steps = {"timesteps": 3} if cls is Imagen else {"num_sample_steps": 3}
    cascade = cls(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, cond_drop_prob=0.2,
                  **steps)
    return randomize_cascade_(cascade, seed=1).eval()


def _stage_call(cascade, index, sampler):
    """(x0 model, its positional inputs, its cond) for stage ``index`` guided at scale 3."""
    batch, size = 2, cascade.image_sizes[index]
    plan = cascade.sampling_plan(cond_scale=3.0, sampler=sampler)[index]
    g = torch.Generator().manual_seed(index)
    embeds, masks = torch.randn(batch, 5, 16, generator=g), torch.ones(batch, 5, dtype=torch.bool)
    cond = cascade._stage_cond(index, batch, embeds, masks)
    if index > 0:
        cond.update(lowres_cond_img=torch.randn(batch, 3, size, size, generator=g),
                    lowres_noise_times=torch.full((batch,), 0.2))
    guidance = dict(remove_parallel_component=True, keep_parallel_frac=0.0)
    x0_model = cascade._x0_model(plan, cond, guidance)
    x = torch.randn(batch, 3, size, size, generator=g)
    level = torch.tensor([-2.0, 1.5]) if sampler == "ddpm" else torch.tensor([0.3, 7.0])  # log-SNR or sigma
    return x0_model, (x, level), cond


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize(("cls", "sampler"), CASES)
def test_stage_x0_model_compiles_as_one_graph(cls, sampler, index):
    cascade = _cascade(cls)
    x0_model, args, cond = _stage_call(cascade, index, sampler)
    with torch.no_grad():
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(x0_model)(*args, **cond)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1  # one trace, no break: what fullgraph=True would compile


@pytest.mark.slow
def test_sample_with_compiled_unets_equals_eager_and_keeps_them():
    """``sample(compile=...)`` (aot_eager here: the tracing path without inductor's build time)."""
    cascade = _cascade(Imagen)
    embeds = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    options = dict(text_embeds=embeds, cond_scale=3.0, generator=1, use_tqdm=False, stop_at_unet_number=1)
    eager = cascade.sample(**options)
    compiled = cascade.sample(compile={"backend": "aot_eager"}, **options)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    cascade.sample(compile={"backend": "aot_eager"}, **options)
    assert len(cascade._compiled_unets) == 1  # made once, reused by the second call
    assert not any("_orig_mod" in key for key in cascade.state_dict())
    with pytest.raises(TypeError, match="compile must be"):
        cascade.sample(compile="yes", **options)


@pytest.mark.slow
def test_frozen_inductor_sampling_follows_weight_updates():
    """``compile={"options": {"freezing": True}}`` (inductor's inference freezing, the faster CPU sampling
    of bench/peers.md) gives the eager samples, and still does after the weights change in place (a
    compiled U-Net is kept across calls, e.g. between training steps): no stale constants."""
    cascade = _cascade(Imagen)
    embeds = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    options = dict(text_embeds=embeds, cond_scale=3.0, generator=1, use_tqdm=False, stop_at_unet_number=1)
    frozen = {"options": {"freezing": True}}
    before = cascade.sample(**options)
    torch.testing.assert_close(cascade.sample(compile=frozen, **options), before, atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in cascade.unets[0].parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=g))
    after = cascade.sample(**options)
    assert (after - before).abs().max() > 1e-2  # the update changes the samples
    torch.testing.assert_close(cascade.sample(compile=frozen, **options), after, atol=1e-5, rtol=0)
