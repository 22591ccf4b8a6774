"""What ``sample()`` hands each stage's U-Net and sampler: the texts and the guidance batch, the
compiled and autocast networks, the thresholding, the schedule, the callback and the documented
defaults. Sampling tests that compare one sample with another cannot see these (a wiring mistake
changes both sides); these look at the calls themselves (the gaps mutation testing found)."""

import inspect

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet, tiny_unet3d

from imagen.cascade import ElucidatedImagen, Imagen
from imagen.cascade.sampling import compile_options_of
from imagen.diffusion import dynamic_thresholding, static_clipping
from imagen.unets import NullUnet


def text_imagen(cls=Imagen, **settings):
    settings = {"image_sizes": (8, 16), "text_embed_dim": 16, "cond_drop_prob": 0.2, **settings}
    settings.setdefault("timesteps" if cls is Imagen else "num_sample_steps", 3)
    return randomize_cascade_(cls(unets=(tiny_unet(), tiny_unet()), **settings), seed=1).eval()


def record_calls(imagen):
    """Every U-Net call during sampling, as (unet number, x, keywords, autocast dtype or None)."""
    calls = []
    for number, unet in enumerate(imagen.unets, start=1):
        def hook(module, args, kwargs, number=number):
            autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            calls.append((number, args[0], kwargs, autocast))
        unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


EMBEDS = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
MASKS = torch.tensor([[True] * 5, [True, True, True, False, False]])


@pytest.mark.parametrize("cls,scale", [(Imagen, 3.0), (ElucidatedImagen, 3.0), (Imagen, 2.0)])
def test_every_stage_gets_the_texts_and_guidance_one_batch_with_the_null_half_dropped(cls, scale):
    imagen = text_imagen(cls)
    calls = record_calls(imagen)
    imagen.sample(text_embeds=EMBEDS, text_masks=MASKS, cond_scale=scale, generator=0, use_tqdm=False)
    assert sorted({number for number, *_ in calls}) == [1, 2]
    with torch.no_grad():
        texts = [unet.text_conditioning(EMBEDS, MASKS) for unet in imagen.unets]
        nulls = [unet.null_text_conditioning(text) for unet, text in zip(imagen.unets, texts)]
    for number, x, kwargs, _ in calls:
        assert x.shape[0] == 4  # [conditional; null] in one forward
        text, null = texts[number - 1], nulls[number - 1]
        for got, conditional, dropped in zip(kwargs["text_conditioning"], text, null):
            assert (got is None) == (conditional is None)
            if got is not None:
                assert torch.equal(got, torch.cat((conditional, dropped.expand_as(conditional))))
        assert ("lowres_cond_img" in kwargs) == (number == 2)
    calls.clear()
    imagen.sample(text_embeds=EMBEDS, text_masks=MASKS, cond_scale=1.0, generator=0, use_tqdm=False)
    for number, x, kwargs, _ in calls:  # no guidance: the conditional batch alone
        assert x.shape[0] == 2
        assert all(torch.equal(a, b) for a, b in zip(kwargs["text_conditioning"][:2], texts[number - 1][:2]))


def test_each_stage_computes_its_text_conditioning_once_per_sample_call(monkeypatch):
    imagen = text_imagen()
    counts = []
    for number, unet in enumerate(imagen.unets, start=1):
        original = unet.text_conditioning

        def counted(*args, number=number, original=original, **kwargs):
            counts.append(number)
            return original(*args, **kwargs)

        monkeypatch.setattr(unet, "text_conditioning", counted)
    calls = record_calls(imagen)
    imagen.sample(text_embeds=EMBEDS, text_masks=MASKS, cond_scale=3.0, generator=0, use_tqdm=False)
    assert counts == [1, 2] and len(calls) >= 2 * 3  # 3 steps per stage, the text prepared once


def test_a_unet_without_text_conditioning_gets_the_text_keywords_at_every_step():
    """U-Nets that cannot prepare their text (a user's own class) keep the text keywords and the drop mask."""
    imagen = text_imagen()
    expected = imagen.sample(text_embeds=EMBEDS, text_masks=MASKS, cond_scale=3.0, generator=0, use_tqdm=False)
    for unet in imagen.unets:  # the same unets, their class without text_conditioning
        unet.__class__ = type("PlainUnet", (type(unet),), {"text_conditioning": property(_missing)})
    calls = record_calls(imagen)
    got = imagen.sample(text_embeds=EMBEDS, text_masks=MASKS, cond_scale=3.0, generator=0, use_tqdm=False)
    for _, _, kwargs, _ in calls:
        assert kwargs["cond_drop_mask"].tolist() == [False, False, True, True]
        assert torch.equal(kwargs["text_embeds"], torch.cat((EMBEDS, EMBEDS)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _missing(self):
    raise AttributeError("text_conditioning")  # so that hasattr(unet, "text_conditioning") is False


def test_guidance_keywords_reach_the_guidance():
    imagen = text_imagen()
    removed = imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, generator=0, use_tqdm=False)
    kept = imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, cfg_remove_parallel_component=False,
                         generator=0, use_tqdm=False)
    half = imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, cfg_keep_parallel_frac=0.5, generator=0, use_tqdm=False)
    assert not torch.equal(removed, kept) and not torch.equal(removed, half) and not torch.equal(kept, half)


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                             (torch.float32, None), (None, None)])
def test_sample_dtype_runs_the_unets_under_autocast_in_that_dtype_and_fp32_without(dtype, autocast):
    imagen = text_imagen()
    calls = record_calls(imagen)
    imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, dtype=dtype, generator=0, use_tqdm=False)
    assert calls and all(seen == autocast for *_, seen in calls)


def test_sample_compile_compiles_each_stage_once_with_the_given_options(monkeypatch):
    compiled = []

    def fake_compile(module, **options):  # records the call; runs the module as it is
        compiled.append((module, options))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    imagen = text_imagen()
    imagen.sample(text_embeds=EMBEDS, generator=0, use_tqdm=False)
    assert compiled == []
    imagen.sample(text_embeds=EMBEDS, compile=True, generator=0, use_tqdm=False)
    assert compiled == [(imagen.unets[0], {}), (imagen.unets[1], {})]
    imagen.sample(text_embeds=EMBEDS, compile=True, generator=0, use_tqdm=False)  # kept, not compiled again
    imagen.sample(text_embeds=EMBEDS, compile={"mode": "max-autotune"}, generator=0, use_tqdm=False)
    assert compiled[2:] == [(imagen.unets[0], {"mode": "max-autotune"}), (imagen.unets[1], {"mode": "max-autotune"})]
    assert "_compiled_unets" not in str(imagen.state_dict().keys())


def test_compile_options_of_every_accepted_form_and_the_error():
    assert compile_options_of(False) is None and compile_options_of(None) is None
    assert compile_options_of(True) == {}
    options = {"mode": "reduce-overhead"}
    assert compile_options_of(options) == options and compile_options_of(options) is not options
    for bad in ("yes", 1, {1: "x"}):
        with pytest.raises(TypeError, match=r"^compile must be a bool or a dict of torch.compile keywords "
                                            r"\(e.g. \{'backend': 'inductor'\}\), got "):
            compile_options_of(bad)


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_stage_x0_model_is_guidance_then_x0_then_the_configured_thresholding(dynamic):
    imagen = text_imagen(dynamic_thresholding=dynamic, dynamic_thresholding_percentile=0.8)
    with torch.no_grad():
        imagen.unets[0].final_conv.weight.mul_(40)  # x0 estimates far outside [-1, 1]
    plan = imagen.sampling_plan(cond_scale=3.0, schedule="karras")[0]
    guidance = dict(remove_parallel_component=True, keep_parallel_frac=0.0)
    x, sigma = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([2.0, 0.5])
    cond = dict(text_embeds=EMBEDS, text_mask=MASKS, cond_drop_mask=torch.zeros(2, dtype=torch.bool))
    stage = imagen.stages[0]
    from imagen.diffusion import classifier_free_guidance

    guided = classifier_free_guidance(imagen.unets[0], 3.0, {"cond_drop_mask": torch.ones(2, dtype=torch.bool)},
                                      **guidance)
    raw = stage.x0_model(guided, plan.sampler, plan.schedule)
    expected = dynamic_thresholding(raw, 0.8) if dynamic else static_clipping(raw)
    with torch.no_grad():
        got = imagen._x0_model(plan, cond, guidance)(x, sigma, **cond)
        assert torch.equal(got, expected(x, sigma, **cond))
        assert got.abs().max() <= 1 and raw(x, sigma, **cond).abs().max() > 1


def test_a_self_conditioned_unet_gets_the_previous_estimate():
    imagen = randomize_cascade_(Imagen(unets=tiny_unet(self_cond=True), image_sizes=8, text_embed_dim=16,
                                       timesteps=3), seed=1).eval()
    calls = record_calls(imagen)
    imagen.sample(text_embeds=EMBEDS, generator=0, use_tqdm=False)
    assert len(calls) == 3
    assert calls[0][2].get("self_cond") is None
    assert all(kwargs["self_cond"] is not None for _, _, kwargs, _ in calls[1:])


def test_the_schedule_and_the_callback_reach_the_sampler():
    imagen = text_imagen()
    steps = []
    time_grid = imagen.sample(text_embeds=EMBEDS, generator=0, use_tqdm=False, callback=steps.append)
    assert len(steps) == 6 and {"x", "denoised"} <= set(steps[0])  # 3 steps per stage
    karras_steps = []
    karras = imagen.sample(text_embeds=EMBEDS, schedule="karras", generator=0, use_tqdm=False,
                           callback=karras_steps.append)
    assert not torch.equal(time_grid, karras)
    # the ddpm sampler on Karras sigmas walks sigmas (from sigma_max 80), not the reference's time grid
    assert "t" in steps[0] and all("sigma" in step and "t" not in step for step in karras_steps)
    assert [float(karras_steps[i]["sigma"]) for i in (0, 3)] == [pytest.approx(80.0)] * 2


def test_a_null_unet_stage_refuses_to_sample_naming_the_way_round_it():
    imagen = Imagen(unets=(NullUnet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=2)
    with pytest.raises(ValueError, match=r"^unet 1 is a NullUnet placeholder and cannot sample; "
                                         r"start_at_unet_number=2 with start_image_or_video gives the low-res input "
                                         r"instead$"):
        imagen.sample(text_embeds=EMBEDS, use_tqdm=False)


def test_sample_keeps_the_reference_defaults():
    defaults = {name: p.default for name, p in inspect.signature(Imagen.sample).parameters.items()}
    assert {k: defaults[k] for k in ("inpaint_resample_times", "batch_size", "cond_scale",
                                     "cfg_remove_parallel_component", "cfg_keep_parallel_frac", "use_tqdm",
                                     "use_one_unet_in_gpu", "start_at_unet_number")} == {
        "inpaint_resample_times": 5, "batch_size": 1, "cond_scale": 1.0, "cfg_remove_parallel_component": True,
        "cfg_keep_parallel_frac": 0.0, "use_tqdm": True, "use_one_unet_in_gpu": True, "start_at_unet_number": 1}


def test_the_defaults_act_as_the_reference_documents_them(capsys):
    unconditional = randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=8, condition_on_text=False,
                                              text_embed_dim=None, cond_drop_prob=0.0, timesteps=2), seed=1).eval()
    assert unconditional.sample(generator=0).shape == (1, 3, 8, 8)  # batch_size=1
    bar = capsys.readouterr().err
    assert "it/s" in bar or "s/it" in bar  # use_tqdm=True: a progress bar
    imagen = text_imagen()
    plain = imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, generator=0, use_tqdm=False)
    assert torch.equal(plain, imagen.sample(text_embeds=EMBEDS, cond_scale=3.0, cfg_remove_parallel_component=True,
                                            cfg_keep_parallel_frac=0.0, generator=0, use_tqdm=False))
    calls = record_calls(imagen)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :, :8] = True
    imagen.sample(text_embeds=EMBEDS, inpaint_images=torch.rand(2, 3, 16, 16), inpaint_masks=masks, generator=0,
                  use_tqdm=False)
    assert len(calls) == 2 * 3 * 5  # two stages x 3 steps x inpaint_resample_times=5 tries


def test_a_bad_batch_size_is_refused_naming_it():
    unconditional = Imagen(unets=tiny_unet(), image_sizes=8, condition_on_text=False, text_embed_dim=None,
                           cond_drop_prob=0.0, timesteps=2)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer in \[1, "):
        unconditional.sample(batch_size=0, use_tqdm=False)


@pytest.mark.parametrize("keywords,name", [
    (dict(generator="seven"), "generator"),
    (dict(stop_at_unet_number=3), "stop_at_unet_number"),
    (dict(text_embeds=torch.randn(2, 5, 7)), "text_embeds"),
    (dict(inpaint_images=torch.rand(3, 3, 16, 16), inpaint_masks=torch.ones(3, 16, 16, dtype=torch.bool)),
     "inpaint_images"),
    (dict(inpaint_images=torch.rand(2, 3, 8, 8), inpaint_masks=torch.ones(2, 8, 8, dtype=torch.bool)),
     "inpaint_images"),  # smaller than the last stage's 16 px
    (dict(lowres_sample_noise_level=-1.0), "lowres_sample_noise_level"),
    (dict(video_frames=0), "video_frames"),
    (dict(generator=2**70), "generator"),
    (dict(text_embeds=EMBEDS.clone().index_fill_(1, torch.tensor([2]), float("nan"))), "text_embeds"),
    (dict(cond_video_frames=torch.full((2, 3, 2, 16, 16), float("nan"))), "cond_video_frames"),
    (dict(post_cond_video_frames=torch.full((2, 3, 2, 16, 16), float("nan"))), "post_cond_video_frames"),
    (dict(start_at_unet_number=2, start_image_or_video=torch.rand(3, 3, 8, 8)), "start_image_or_video"),
])
def test_sample_checks_each_keyword_at_the_boundary_naming_it(keywords, name):
    imagen = text_imagen()
    with pytest.raises((ValueError, TypeError), match=rf"^{name}\b"):
        imagen.sample(**{"text_embeds": EMBEDS, **keywords}, use_tqdm=False)


def test_the_sampling_noise_level_of_the_low_resolution_input_reaches_the_sr_stage():
    imagen = text_imagen()
    calls = record_calls(imagen)
    seen = {}
    for level in (0.1, 0.5):
        calls.clear()
        imagen.sample(text_embeds=EMBEDS, lowres_sample_noise_level=level, generator=0, use_tqdm=False, device="cpu")
        seen[level] = [kwargs["lowres_noise_times"] for number, _, kwargs, _ in calls if number == 2]
    assert seen[0.1] and not torch.equal(seen[0.1][0], seen[0.5][0])
    assert all(torch.equal(times, seen[0.1][0]) for times in seen[0.1])  # one level for every step


def test_conditioning_images_reach_every_stage_at_its_size():
    imagen = randomize_cascade_(Imagen(unets=(tiny_unet(cond_images_channels=3), tiny_unet(cond_images_channels=3)),
                                       image_sizes=(8, 16), text_embed_dim=16, timesteps=2), seed=1).eval()
    calls = record_calls(imagen)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    imagen.sample(text_embeds=EMBEDS, cond_images=pixels, generator=0, use_tqdm=False)
    assert sorted({number for number, *_ in calls}) == [1, 2]
    for number, _, kwargs, _ in calls:  # in the model's range [-1, 1], at the stage's size
        given = kwargs["cond_images"]
        assert given.shape == (2, 3, 8 * number, 8 * number)
        if number == 2:
            torch.testing.assert_close(given, pixels * 2 - 1, rtol=0, atol=1e-6)


def test_sigma_min_and_max_reach_the_sampler_of_an_edm_stage():
    imagen = text_imagen(ElucidatedImagen)
    calls = record_calls(imagen)
    first_noise = {}
    for sigma_max in (40.0, 10.0):
        calls.clear()
        imagen.sample(text_embeds=EMBEDS, sigma_max=sigma_max, sigma_min=0.05, generator=0, use_tqdm=False)
        first_noise[sigma_max] = calls[0][2].get("time", calls[0][1])  # the first call's input
    assert not torch.equal(first_noise[40.0], first_noise[10.0])
    calls.clear()
    low = imagen.sample(text_embeds=EMBEDS, sigma_min=0.5, generator=0, use_tqdm=False)
    assert not torch.equal(low, imagen.sample(text_embeds=EMBEDS, sigma_min=0.002, generator=0, use_tqdm=False))


def test_start_image_or_video_becomes_the_sr_stages_low_resolution_input():
    imagen = text_imagen(lowres_sample_noise_level=0.0)
    calls = record_calls(imagen)
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    out = imagen.sample(text_embeds=EMBEDS, start_at_unet_number=2, start_image_or_video=start, generator=0,
                        use_tqdm=False)
    assert out.shape == (2, 3, 16, 16) and {number for number, *_ in calls} == {2}
    other = imagen.sample(text_embeds=EMBEDS, start_at_unet_number=2, start_image_or_video=1 - start, generator=0,
                          use_tqdm=False)
    assert not torch.equal(out, other)
    with pytest.raises(ValueError, match=r"^start_image_or_video has batch size 1, but the batch has 2 samples$"):
        imagen.sample(text_embeds=EMBEDS, start_at_unet_number=2, start_image_or_video=start[:1], use_tqdm=False)
    with pytest.raises(ValueError, match=r"^start_at_unet_number=2 needs start_image_or_video \(the low-res input\)$"):
        imagen.sample(text_embeds=EMBEDS, start_at_unet_number=2, use_tqdm=False)


def test_inpainting_runs_inside_the_sampler_not_only_as_the_final_paste():
    """The unknown region follows the known one: it differs from a plain sample of the same seed (a
    sampler that never saw the known region, its output pasted over at the end, would equal it there; one
    stage, as a super-resolution stage would see the pasted region in its low-resolution input anyway)."""
    imagen = randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=16, text_embed_dim=16, timesteps=3),
                                seed=1).eval()
    known = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :, :8] = True
    plain = imagen.sample(text_embeds=EMBEDS, generator=0, use_tqdm=False)
    inpainted = imagen.sample(text_embeds=EMBEDS, inpaint_images=known, inpaint_masks=masks, inpaint_resample_times=1,
                              generator=0, use_tqdm=False)
    assert torch.equal(inpainted[..., :8], known[..., :8])
    assert not torch.allclose(inpainted[..., 8:], plain[..., 8:], atol=1e-3)


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_use_tqdm_gives_one_bar_per_stage_or_none(capsys, use_tqdm):
    text_imagen().sample(text_embeds=EMBEDS, generator=0, use_tqdm=use_tqdm)
    started = capsys.readouterr().err.count("0/3 [")  # each bar's first state: 3 steps of a stage
    assert started == (2 if use_tqdm else 0)


def test_conditioning_images_of_another_batch_are_refused_naming_them():
    imagen = randomize_cascade_(Imagen(unets=(tiny_unet(cond_images_channels=3), tiny_unet(cond_images_channels=3)),
                                       image_sizes=(8, 16), text_embed_dim=16, timesteps=2), seed=1).eval()
    with pytest.raises(ValueError, match=r"^cond_images has batch size 3, but the batch has 2 samples$"):
        imagen.sample(text_embeds=EMBEDS, cond_images=torch.rand(3, 3, 16, 16), generator=0, use_tqdm=False)


@pytest.mark.parametrize("steps,expected", [(1, ("sech", 0.05)), (10, ("sech", 0.05)), (11, ("sech", None)),
                                            (20, ("sech", None)), (21, ("karras", None)), (250, ("karras", None))])
def test_a_non_default_sampler_gets_the_schedule_tuned_for_its_step_count(steps, expected):
    from types import SimpleNamespace

    from imagen.cascade.sampling import resolve_schedule

    stage = SimpleNamespace(default_sampler="ddpm", reference_schedule="time")
    assert resolve_schedule(stage, "dpmpp_2m", steps, None) == expected
    assert resolve_schedule(stage, "dpmpp_2m", steps, "default") == expected
    assert resolve_schedule(stage, "ddpm", steps, None) == ("time", None)  # the reference's grid
    assert resolve_schedule(stage, "ddpm", steps, "karras") == ("karras", None)
    with pytest.raises(ValueError, match="schedule must be one of"):
        resolve_schedule(stage, "ddpm", steps, "cosine")


@pytest.mark.parametrize("scale", [-0.5, float("inf"), float("nan"), True, "2"])
def test_a_cond_scale_outside_zero_to_infinity_is_refused_naming_it(scale):
    imagen = text_imagen()
    for given in (scale, (1.0, scale)):  # one for every stage, or one per stage
        with pytest.raises(ValueError, match=r"^cond_scale(\[1\])? must be a finite number >= 0, got "):
            imagen.sample(text_embeds=EMBEDS, cond_scale=given, use_tqdm=False)
        with pytest.raises(ValueError, match=r"^cond_scale must be a finite number >= 0 \(or one per unet\), got "):
            imagen.sampling_plan(cond_scale=given)  # public too: the CLI plans before it samples


@pytest.mark.parametrize("scale", [0, 0.5])
def test_cond_scales_from_zero_up_are_accepted(scale):
    imagen = text_imagen()
    for given in (scale, (scale, scale)):
        assert [plan.cond_scale for plan in imagen.sampling_plan(cond_scale=given)] == [scale, scale]
        assert torch.isfinite(imagen.sample(text_embeds=EMBEDS, cond_scale=given, generator=0, use_tqdm=False)).all()


@pytest.mark.parametrize("keywords,message", [
    (dict(texts=["a", "b"]), r"^texts are ignored: this cascade has condition_on_text=False \(as in the reference\)$"),
    (dict(cond_scale=3.0), r"^cond_scale != 1 on a cascade with condition_on_text=False is ignored \(as in the "
                           r"reference, guidance without text changes nothing\)$"),
])
def test_texts_or_guidance_on_a_text_free_cascade_are_ignored_with_one_warning(monkeypatch, keywords, message):
    from imagen.cascade import sampling

    monkeypatch.setattr(sampling, "_WARNED", set())
    unconditional = randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=8, condition_on_text=False,
                                              text_embed_dim=None, cond_drop_prob=0.1, timesteps=2), seed=1).eval()
    plain = unconditional.sample(batch_size=2, generator=0, use_tqdm=False)
    with pytest.warns(UserWarning, match=message) as seen:
        ignored = unconditional.sample(**keywords, batch_size=2, generator=0, use_tqdm=False)
    assert torch.equal(plain, ignored)
    assert [w.filename for w in seen] == [__file__]  # the warning points at the caller's line


def test_inpaint_masks_alone_and_pil_images_of_videos_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"^inpaint_masks need inpaint_images \(or inpaint_videos\)$"):
        text_imagen().sample(text_embeds=EMBEDS, inpaint_masks=torch.ones(2, 16, 16, dtype=torch.bool),
                             use_tqdm=False)
    video = Imagen(unets=tiny_unet3d(), image_sizes=8, condition_on_text=False, text_embed_dim=None, timesteps=2)
    with pytest.raises(ValueError, match=r"^return_pil_images is for image cascades; a video cascade returns "
                                         r"tensors$"):
        video.sample(batch_size=1, video_frames=2, return_pil_images=True, use_tqdm=False)


def test_inpainting_without_texts_takes_its_batch_from_the_images_or_batch_size():
    unconditional = randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=8, condition_on_text=False,
                                              text_embed_dim=None, timesteps=2), seed=1).eval()
    known, mask = torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool)
    # batch_size left at 1: the images give the batch; a batch_size other than 1 must agree with them
    assert unconditional.sample(inpaint_images=known, inpaint_masks=mask, generator=0, use_tqdm=False).shape[0] == 2
    assert unconditional.sample(inpaint_images=known, inpaint_masks=mask, batch_size=2, generator=0,
                                use_tqdm=False).shape[0] == 2
    for batch_size in (2, 3):
        with pytest.raises(ValueError, match=rf"^inpaint_images has batch size {5 - batch_size}, but the batch has "
                                             rf"{batch_size} samples$"):
            unconditional.sample(inpaint_images=torch.rand(5 - batch_size, 3, 8, 8),
                                 inpaint_masks=torch.ones(5 - batch_size, 8, 8, dtype=torch.bool),
                                 batch_size=batch_size, use_tqdm=False)


def test_a_start_image_is_first_brought_to_the_size_of_the_stage_it_replaces():
    imagen = text_imagen(lowres_sample_noise_level=0.0)
    start = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    at_its_size = imagen._resize(start, 0, None)  # 8 px, as the low-res stage would have sampled it
    outputs = [imagen.sample(text_embeds=EMBEDS, start_at_unet_number=2, start_image_or_video=given, generator=0,
                             use_tqdm=False) for given in (start, at_its_size)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)


def video_imagen():
    return randomize_cascade_(Imagen(unets=(tiny_unet3d(), tiny_unet3d()), image_sizes=(8, 16), text_embed_dim=16,
                                     temporal_downsample_factor=(2, 1), timesteps=2), seed=1).eval()


def test_video_conditioning_frames_reach_every_stage_at_its_size_and_frame_rate():
    imagen = video_imagen()
    calls = record_calls(imagen)
    before, after = torch.rand(2, 3, 2, 16, 16), torch.rand(2, 3, 4, 16, 16)
    imagen.sample(text_embeds=EMBEDS, video_frames=4, cond_video_frames=before, post_cond_video_frames=after,
                  generator=0, use_tqdm=False)
    assert sorted({number for number, *_ in calls}) == [1, 2]
    for number, x, kwargs, _ in calls:  # stage 1 sees half the frames (temporal_downsample_factor 2)
        assert x.shape[2:] == ((2, 8, 8) if number == 1 else (4, 16, 16))
        assert kwargs["cond_video_frames"].shape == ((2, 3, 1, 8, 8) if number == 1 else (2, 3, 2, 16, 16))
        assert kwargs["post_cond_video_frames"].shape == ((2, 3, 2, 8, 8) if number == 1 else (2, 3, 4, 16, 16))
        if number == 2:
            torch.testing.assert_close(kwargs["cond_video_frames"], before * 2 - 1, rtol=0, atol=1e-6)
            torch.testing.assert_close(kwargs["post_cond_video_frames"], after * 2 - 1, rtol=0, atol=1e-6)


def test_a_start_video_is_first_brought_to_the_frames_of_the_stage_it_replaces():
    imagen = video_imagen()
    calls = record_calls(imagen)
    start = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    halved = imagen._resize(start, 0, 2)  # the low-res stage's 2 frames, as it would have sampled them
    seen = []
    for given in (start, halved):
        calls.clear()
        imagen.sample(text_embeds=EMBEDS, video_frames=4, start_at_unet_number=2, start_image_or_video=given,
                      lowres_sample_noise_level=0.0, generator=0, use_tqdm=False)
        seen.append(calls[0][2]["lowres_cond_img"])
    assert seen[0].shape == (2, 3, 4, 16, 16) and not torch.equal(start, imagen._resize(halved, 0, 4))
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls,name", [(Imagen, name) for name in (
    "cond_scale", "init_images", "skip_steps", "refine_from_step", "sampler", "steps", "schedule")] + [
    (ElucidatedImagen, "sigma_min"), (ElucidatedImagen, "sigma_max")])
def test_a_per_unet_keyword_of_another_length_is_refused_naming_it(cls, name):
    with pytest.raises(ValueError, match=rf"^{name} has 3 entries \(None, None, None\), but the cascade has 2 unets$"):
        text_imagen(cls).sampling_plan(**{name: (None, None, None)})


@pytest.mark.parametrize("keywords,message", [
    (dict(start_at_unet_number=2, stop_at_unet_number=1),
     r"^stop_at_unet_number 1 comes before start_at_unet_number 2$"),
    (dict(sigma_max=10.0), r"^sigma_min / sigma_max are ElucidatedImagen sample keywords; Imagen stages sample on "
                           r"their time grid$"),
    (dict(skip_steps=True), r"^skip_steps for unet 1 must be an int in \[0, 3\), got True$"),
])
def test_sampling_plan_refuses_inconsistent_keywords_with_the_exact_reason(keywords, message):
    with pytest.raises(ValueError, match=message):
        text_imagen().sampling_plan(**keywords)


def test_a_video_cascade_needs_video_frames_and_plans_keep_the_sigma_bounds():
    with pytest.raises(ValueError, match=r"^a video cascade needs video_frames \(the number of frames to sample\)$"):
        video_imagen().sampling_plan()
    first, second = text_imagen(ElucidatedImagen).sampling_plan(sigma_min=0.01, sigma_max=(40.0, 20.0))
    assert [(plan.sigma_min, plan.sigma_max) for plan in (first, second)] == [(0.01, 40.0), (0.01, 20.0)]
    assert first.sampler_options["churn_steps"] == first.steps == 3  # the Heun churn spread over the stage's steps


def test_video_init_refine_and_inpainting_follow_each_stages_frame_rate():
    imagen = video_imagen()  # stage 1 samples 2 of the 4 frames
    videos = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    masks = torch.zeros(2, 4, 16, 16, dtype=torch.bool)
    masks[..., :8] = True
    runs = [dict(init_images=(videos, None), skip_steps=(1, 0)), dict(refine_from_step=(None, 1)),
            dict(inpaint_videos=videos, inpaint_masks=masks)]
    for keywords in runs:
        out = imagen.sample(text_embeds=EMBEDS, video_frames=4, generator=0, use_tqdm=False, **keywords)
        assert out.shape == (2, 3, 4, 16, 16) and torch.isfinite(out).all(), keywords
