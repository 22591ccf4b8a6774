"""Inputs are validated once at the cascade's boundary: NaN/Inf and out-of-range pixels, dtypes,
non-finite numbers, configs with no upper bound, deeply nested JSON (issue 13)."""

import math

import pytest
import torch
from cascade_testing import tiny_unet

from imagen.cascade import ElucidatedImagenConfig, Imagen, ImagenConfig
from imagen.cascade.checks import check_inputs, check_keywords, check_number, check_pixels


@pytest.fixture(scope="module")
def imagen():
    return Imagen(unets=(tiny_unet(), tiny_unet(seed=1)), image_sizes=(8, 16), text_embed_dim=16, timesteps=2)


def _images(batch=2, size=16, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _embeds(batch=2):
    return torch.randn(batch, 5, 16, generator=torch.Generator().manual_seed(1))


def _loss(imagen, images, unet_number=2, **kwargs):
    kwargs.setdefault("text_embeds", _embeds())
    return imagen(images, unet_number=unet_number, generator=torch.Generator().manual_seed(3), **kwargs)


def _poisoned(value):
    images = _images()
    images[1, 2, 5, 7] = value
    return images


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("unet_number", [1, 2])
def test_nonfinite_pixels_are_refused_naming_the_parameter(imagen, value, unet_number):
    # unet 1 sees the images downsampled to 8x8: a single bad pixel must not hide in the resize
    with pytest.raises(
        ValueError, match=r"^images holds NaN or infinite values; pixels must be finite and in \[0, 1\]"
    ):
        _loss(imagen, _poisoned(value), unet_number)


@pytest.mark.parametrize("name", ["cond_images", "cond_video_frames", "text_embeds"])
def test_nonfinite_conditioning_is_refused_naming_it(imagen, name):
    value = _embeds() if name == "text_embeds" else _images()
    value.view(-1)[3] = math.nan
    with pytest.raises(ValueError, match=f"^{name} holds NaN or infinite values"):
        check_keywords(imagen, **{name: value})
    if name == "text_embeds":
        with pytest.raises(ValueError, match=r"^text_embeds holds NaN"):
            _loss(imagen, _images(), text_embeds=value)


@pytest.mark.parametrize(("scale", "shift"), [(2.0, -0.5), (1.0, -1.0), (255.0, 0.0)])
def test_pixels_outside_the_range_are_refused(imagen, scale, shift):
    images = _images() * scale + shift
    with pytest.raises(ValueError, match=r"^images holds values in \[.*\]; pixels must be finite and in \[0, 1\]"):
        _loss(imagen, images)


def test_pixels_in_minus_one_one_without_auto_normalize():
    cascade = Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16, timesteps=2, auto_normalize_img=False)
    loss = _loss(cascade, _images(size=8) * 2 - 1, unet_number=1)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        _loss(cascade, _images(size=8) * 3 - 1, unet_number=1)


def test_uint8_pixels_mean_what_the_reference_says(imagen):
    pixels = (_images() * 255).round().to(torch.uint8)
    assert torch.equal(_loss(imagen, pixels), _loss(imagen, pixels.float() / 255))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_pixels_are_taken_as_float32(imagen, dtype):
    half = _images().to(dtype)
    assert torch.equal(_loss(imagen, half), _loss(imagen, half.float()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bool, torch.complex64])
def test_other_dtypes_are_refused_as_by_the_reference(imagen, dtype):
    with pytest.raises(TypeError, match=rf"^images must be float32 \(or uint8 .*got dtype {dtype}"):
        _loss(imagen, _images().to(dtype))


def test_one_host_sync_per_device_for_every_tensor():
    # several tensors on one device: one stacked aminmax, read back once
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(self.shape)
        return original(self)

    torch.Tensor.tolist = counting
    try:
        out = check_inputs({"a": (_images(), (0.0, 1.0)), "b": (_embeds(), None), "c": (None, (0.0, 1.0))})
    finally:
        torch.Tensor.tolist = original
    assert calls == [torch.Size([2, 2])] and set(out) == {"a", "b"}


def test_check_pixels_names_empty_and_non_tensor_values():
    with pytest.raises(ValueError, match=r"^inpaint_images is empty"):
        check_pixels("inpaint_images", torch.zeros(0, 3, 8, 8), (0.0, 1.0))
    with pytest.raises(TypeError, match=r"^cond_images must be a tensor, got str"):
        check_pixels("cond_images", "pixels.png", (0.0, 1.0))


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        (dict(cond_scale=math.inf), r"^cond_scale must be a finite number >= 0, got inf"),
        (dict(cond_scale=math.nan), r"^cond_scale must be a finite number >= 0, got nan"),
        (dict(cond_scale=(1.0, math.inf)), r"^cond_scale\[1\] must be a finite number >= 0"),
        (dict(lowres_sample_noise_level=math.nan), r"^lowres_sample_noise_level must be a finite number in \[0, 1\]"),
        (dict(lowres_sample_noise_level=math.inf), r"^lowres_sample_noise_level must be a finite number in \[0, 1\]"),
        (dict(lowres_sample_noise_level=1.5), r"^lowres_sample_noise_level must be a finite number in \[0, 1\]"),
        (dict(init_images=(None, _poisoned(math.nan))), r"^init_images\[1\] holds NaN"),
        (dict(start_image_or_video=_images() - 1), r"^start_image_or_video holds values in"),
        (dict(inpaint_images=_images().double()), r"^inpaint_images must be float32"),
        (dict(steps=10**9), r"^steps must be an integer in \[1, 100000\], got 1000000000"),
        (dict(steps=(2, 0)), r"^steps\[1\] must be an integer in \[1, 100000\]"),
        (dict(batch_size=10**9), r"^batch_size=1000000000 of 3 x 16 x 16 samples would need .* GiB"),
        (dict(batch_size=0), r"^batch_size must be an integer in \[1, "),
        (dict(generator=2**70), r"^generator as an int seed must lie in"),
        (dict(start_at_unet_number=0), r"^start_at_unet_number must be an integer in \[1, 2\], got 0"),
        (dict(stop_at_unet_number=3), r"^stop_at_unet_number must be an integer in \[1, 2\], got 3"),
    ],
)
def test_sample_keywords_are_checked_once_up_front(imagen, keywords, message):
    with pytest.raises(ValueError if "dtype" not in message and "float32" not in message else TypeError, match=message):
        check_keywords(imagen, **keywords)


def test_check_keywords_converts_with_the_reference_meaning(imagen):
    pixels = (_images() * 255).to(torch.uint8)
    out = check_keywords(imagen, init_images=[None, pixels], cond_scale=(1, 3.0), lowres_sample_noise_level=0)
    assert out["init_images"][0] is None and torch.equal(out["init_images"][1], pixels / 255)
    assert out["cond_scale"] == (1, 3.0) and out["lowres_sample_noise_level"] == 0.0
    assert check_number("x", torch.tensor(0.5), low=0, high=1) == 0.5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(image_sizes=(8, 10**6)), r"^image_sizes must be an integer in \[1, 16384\]"),
        (dict(timesteps=10**9), r"^timesteps must be an integer in \[1, 100000\]"),
        (dict(channels=10**6), r"^channels must be an integer in \[1, 1024\]"),
        (dict(text_embed_dim=10**9), r"^text_embed_dim must be an integer in \[1, 65536\]"),
        (dict(cond_drop_prob="a lot"), r"^cond_drop_prob must be a number in \[0, 1\], got 'a lot'"),
        (dict(lowres_sample_noise_level=math.nan), r"^lowres_sample_noise_level must be a number in \[0, 1\]"),
        (dict(min_snr_gamma=math.inf), r"^min_snr_gamma must be a finite number > 0"),
        (dict(video="no"), r"^video must be True or False, got 'no'"),
        (dict(dynamic_thresholding=(True, "yes")), r"^dynamic_thresholding must be True or False"),
        (dict(only_train_unet_number=1.5), r"^only_train_unet_number must be None or an integer in \[1, 2\]"),
        (dict(text_encoder_name=7), r"^text_encoder_name must be a non-empty string"),
    ],
)
def test_cascade_configs_are_bounded_and_name_the_field(settings, message):
    unets = [{"dim": 8, "dim_mults": [1, 2]}] * 2
    with pytest.raises(ValueError, match=message):
        ImagenConfig(**{"unets": unets, "image_sizes": (8, 16), **settings})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(sigma_max=math.inf), r"^sigma_max must be a number in \(0, 10000\]"),
        (dict(P_mean=math.nan), r"^P_mean must be a number in \[-20, 20\]"),
        (dict(P_mean=10**9), r"^P_mean must be a number in \[-20, 20\]"),  # exp(1e9): a NaN loss (fuzz)
        (dict(S_churn=-1.0), r"^S_churn must be a number in \[0, 10000\]"),
        (dict(num_sample_steps=10**7), r"^num_sample_steps must be an integer in \[1, 100000\]"),
    ],
)
def test_elucidated_configs_are_bounded(settings, message):
    with pytest.raises(ValueError, match=message):
        ElucidatedImagenConfig(unets=[{"dim": 8, "dim_mults": [1, 2]}], image_sizes=8, **settings)


def test_a_huge_unet_in_a_config_fails_fast_naming_its_entry():
    config = ImagenConfig(
        unets=[{"dim": 8, "dim_mults": [1, 2]}, {"dim": 10**6, "dim_mults": [1, 2]}], image_sizes=(8, 16)
    )
    with pytest.raises(ValueError, match=r"^unets\[1\]: dim must be at most 65536, got 1000000"):
        config.create()


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"unets": ' + "[" * 50_000 + "]" * 50_000 + "}"])
def test_deeply_nested_json_is_a_clear_error(text):
    with pytest.raises(ValueError, match="nested too deeply"):
        ImagenConfig.from_json(text)


def test_errors_name_the_unet_keyword_actually_passed(imagen):
    with pytest.raises(ValueError, match=r"^unet_number must be an integer in \[1, 2\], got 3"):
        imagen.get_unet(3)
    assert imagen._index(2, "stop_at_unet_number") == 1
    with pytest.raises(ValueError, match=r"^start_at_unet_number must be"):
        imagen._index(0, "start_at_unet_number")


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        (dict(cond_scale=math.inf), r"^cond_scale must be a finite number >= 0, got inf"),
        (dict(cond_scale=(1.0, math.nan)), r"^cond_scale\[1\] must be a finite number >= 0, got nan"),
        (dict(lowres_sample_noise_level=math.nan), r"^lowres_sample_noise_level must be a finite number in \[0, 1\]"),
        (dict(steps=10**9), r"^steps must be an integer in \[1, 100000\]"),
        (dict(start_at_unet_number=3), r"^start_at_unet_number must be an integer in \[1, 2\], got 3"),
        (dict(init_images=_poisoned(math.inf)), r"^init_images holds NaN or infinite values"),
        (dict(cond_images=_images() + 1), r"^cond_images holds values in"),
    ],
)
def test_sample_refuses_bad_keywords_before_any_stage_runs(imagen, monkeypatch, keywords, message):
    def never(*args, **kwargs):
        raise AssertionError("a stage ran before the keywords were checked")

    monkeypatch.setattr(type(imagen), "_sample_stage", never)
    with pytest.raises(ValueError, match=message):
        imagen.sample(text_embeds=_embeds(), use_tqdm=False, **keywords)


def test_sampling_plan_refuses_an_infinite_cond_scale(imagen):
    with pytest.raises(ValueError, match=r"^cond_scale must be a finite number >= 0"):
        imagen.sampling_plan(cond_scale=math.inf)
