"""Bad input raises ValueError (or TypeError) naming the value and what is accepted."""

import pytest
import torch

from imagen.unets import Unet


@pytest.fixture(scope="module")
def unet(h):
    return Unet(**h.tiny()).eval()


def test_image_side_not_divisible(unet):
    assert unet.downsample_factor == 2
    with pytest.raises(ValueError, match=r"9x8.*divisible by 2"):
        unet(torch.randn(1, 3, 9, 8), torch.rand(1))


def test_memory_efficient_downsamples_every_stage(h):
    assert Unet(**h.tiny(memory_efficient=True)).downsample_factor == 4


def test_wrong_channel_count(unet):
    with pytest.raises(ValueError, match="x has 4 channels"):
        unet(torch.randn(1, 4, 8, 8), torch.rand(1))


def test_wrong_rank(unet):
    with pytest.raises(ValueError, match=r"x must be 4D.*\(1, 3, 1, 8, 8\)"):
        unet(torch.randn(1, 3, 1, 8, 8), torch.rand(1))


def test_text_embedding_width_mismatch(unet):
    with pytest.raises(ValueError, match=r"text_embed_dim=12.*\(1, 4, 768\)"):
        unet(torch.randn(1, 3, 8, 8), torch.rand(1), text_embeds=torch.randn(1, 4, 768))


def test_text_mask_shape_mismatch(unet):
    with pytest.raises(ValueError, match="text_mask"):
        unet(torch.randn(1, 3, 8, 8), torch.rand(1), text_embeds=torch.randn(1, 4, 12),
             text_mask=torch.ones(1, 5, dtype=torch.bool))


def test_time_shape(unet):
    with pytest.raises(ValueError, match=r"time must have shape \(2,\)"):
        unet(torch.randn(2, 3, 8, 8), torch.rand(3))


@pytest.mark.parametrize("name", ["num_resnet_blocks", "layer_attns", "layer_cross_attns", "layer_attns_depth",
                                  "use_linear_attn", "use_linear_cross_attn"])
def test_mismatched_per_stage_tuple(h, name):
    value = (True, False, True) if "attn" in name and "depth" not in name else (1, 1, 1)
    with pytest.raises(ValueError, match=f"{name} has 3 entries .* 2 stages"):
        Unet(**h.tiny(**{name: value}))


@pytest.mark.parametrize("heads", [0, -1])
def test_attn_heads_below_one(h, heads):
    with pytest.raises(ValueError, match=f"attn_heads must be an int >= 1, got {heads}"):
        Unet(**h.tiny(attn_heads=heads))


@pytest.mark.parametrize(("changes", "match"), [
    ({"resize_mode": "cubic"}, "resize_mode"),
    ({"dropout": 1.0}, "dropout"),
    ({"dim_mults": ()}, "dim_mults"),
    ({"learned_sinu_pos_emb_dim": 7}, "learned_sinu_pos_emb_dim"),
    ({"init_cross_embed_kernel_sizes": (2, 3)}, "kernel sizes"),
])
def test_bad_constructor_values(h, changes, match):
    with pytest.raises(ValueError, match=match):
        Unet(**h.tiny(**changes))


def test_lowres_inputs_required_iff_lowres_cond(h, unet):
    lowres = Unet(**h.tiny(lowres_cond=True))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="lowres_cond_img is required"):
        lowres(x, torch.rand(1), lowres_noise_times=torch.rand(1))
    with pytest.raises(ValueError, match="lowres_noise_times is required"):
        lowres(x, torch.rand(1), lowres_cond_img=x)
    with pytest.raises(ValueError, match="lowres_cond=False"):
        unet(x, torch.rand(1), lowres_cond_img=x)


def test_text_given_to_an_unconditional_unet_is_ignored(h):
    """As in the reference: an unconditional unet ignores text_embeds (whatever their width)."""
    unet = h.make(Unet, **h.tiny(cond_on_text=False))
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        assert torch.equal(unet(x, t, text_embeds=torch.randn(1, 2, 5)), unet(x, t))


def test_unknown_keyword_is_a_type_error(h):
    with pytest.raises(TypeError, match="resnet_groups"):
        Unet(**h.tiny(resnet_groups=4))


def test_bad_drop_arguments(unet):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        unet(x, torch.rand(2), cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="cond_drop_mask"):
        unet(x, torch.rand(2), cond_drop_mask=torch.ones(3, dtype=torch.bool))


def test_cond_images_channels(h):
    unet = Unet(**h.tiny(cond_images_channels=2))
    with pytest.raises(ValueError, match="cond_images has 3 channels"):
        unet(torch.randn(1, 3, 8, 8), torch.rand(1), cond_images=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="cond_images is required"):
        unet(torch.randn(1, 3, 8, 8), torch.rand(1))


@pytest.mark.parametrize("cls", ["Unet", "Unet3D"])
@pytest.mark.parametrize(("changes", "match"), [
    ({"dim": 10**6}, r"dim must be at most 65536, got 1000000"),
    ({"dim": 8192, "dim_mults": (1, 2, 4, 8)}, r"would hold at least .* parameters .* lower dim"),
    ({"max_text_len": 10**7}, r"max_text_len must be at most"),
    ({"attn_heads": 10**5}, r"attn_heads must be at most"),
    ({"ff_mult": float("inf")}, r"ff_mult must be a number in \(0, 64\]"),
    ({"init_cross_embed_kernel_sizes": (3, 10**4 + 1)}, r"init_cross_embed_kernel_sizes must be at most 255"),
])
def test_configs_are_bounded_before_anything_is_allocated(h, monkeypatch, cls, changes, match):
    import imagen.unets as unets

    def never(*args, **kwargs):
        raise AssertionError("a layer was built before the bounds were checked")

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", never)
    monkeypatch.setattr(torch.nn.Linear, "__init__", never)
    with pytest.raises(ValueError, match=match):
        getattr(unets, cls)(**h.tiny(**changes))


def test_the_parameter_estimate_is_a_lower_bound(h):
    from imagen.unets._checks import estimated_parameters

    three = {"dim": 16, "dim_mults": (1, 2, 4), "layer_attns": True, "layer_cross_attns": True}
    for changes in ({}, three, {"num_resnet_blocks": (1, 3)}, {"attend_at_middle": False}):
        keywords = h.tiny(**changes)
        assert 0 < estimated_parameters(keywords) <= sum(p.numel() for p in Unet(**keywords).parameters())


@pytest.mark.parametrize("cls", ["Unet", "Unet3D"])
@pytest.mark.parametrize(("changes", "match"), [
    ({"lowres_cond": -1}, r"^lowres_cond must be True or False, got -1"),  # built a conv with 0 input channels
    ({"self_cond": 2}, r"^self_cond must be True or False, got 2"),
    ({"layer_attns": (1, True)}, r"^layer_attns must be a bool or a tuple of bools"),
    ({"dropout": "0.1"}, r"^dropout must be a number, got '0.1'"),
    ({"ff_mult": True}, r"^ff_mult must be a number, got True"),
])
def test_flags_must_be_bools_and_floats_numbers(h, cls, changes, match):
    import imagen.unets as unets

    with pytest.raises(TypeError, match=match):
        getattr(unets, cls)(**h.tiny(**changes))
