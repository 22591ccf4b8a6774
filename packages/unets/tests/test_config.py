"""Configs: JSON round trips, unet_from_config, recast; NullUnet; presets."""

import json
import re
from pathlib import Path

import pytest
import torch

from imagen.unets import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet, Unet3D, unet_from_config

ATTRIBUTES = ("channels", "channels_out", "lowres_cond", "self_cond", "cond_images_channels", "text_embed_dim",
              "cond_on_text", "max_text_len", "is_video", "is_null", "downsample_factor")


@pytest.mark.parametrize("cls", [Unet, Unet3D])
def test_config_round_trip_through_json(h, cls):
    unet = h.make(cls, **h.tiny(num_resnet_blocks=(1, 2), memory_efficient=True))
    config = json.loads(json.dumps(unet.config))
    assert config["type"] == cls.__name__ and config["num_resnet_blocks"] == [1, 2]
    rebuilt = unet_from_config(config).eval()
    assert type(rebuilt) is cls and rebuilt.config == unet.config
    rebuilt.load_state_dict(unet.state_dict())
    x = torch.randn(1, 3, 8, 8) if cls is Unet else torch.randn(1, 3, 2, 8, 8)
    with torch.no_grad():
        t = torch.tensor([0.3])
        assert torch.equal(rebuilt(x, t), unet(x, t))


def test_recast_same_values_returns_the_same_object(h):
    unet = Unet(**h.tiny())
    assert unet.recast() is unet
    assert unet.recast(lowres_cond=False, text_embed_dim=12, dim_mults=[1, 2]) is unet


def test_recast_builds_a_fresh_unet_with_the_changes(h):
    unet = Unet(**h.tiny())
    sr = unet.recast(lowres_cond=True, text_embed_dim=20, channels=1)
    assert sr is not unet and type(sr) is Unet
    assert (sr.lowres_cond, sr.text_embed_dim, sr.channels, sr.channels_out) == (True, 20, 1, 1)
    assert sr.config["dim"] == 8 and not unet.lowres_cond


def test_recast_unknown_key(h):
    with pytest.raises(ValueError, match="unknown keywords \\['colour'\\]"):
        Unet(**h.tiny()).recast(colour=3)


def test_unknown_type():
    with pytest.raises(ValueError, match="'Nope'"):
        unet_from_config({"type": "Nope"})


@pytest.mark.parametrize("cls", [Unet, Unet3D, NullUnet])
def test_every_stage_has_the_attributes(h, cls):
    unet = cls(**h.tiny()) if cls is not NullUnet else cls()
    for name in ATTRIBUTES:
        assert hasattr(unet, name), name
    assert unet.is_video == (cls is Unet3D) and unet.is_null == (cls is NullUnet)


def test_null_unet_returns_its_input():
    unet = NullUnet(dim=32, anything=1)
    x = torch.randn(2, 3, 8, 8)
    assert unet(x, torch.rand(2), text_embeds=torch.randn(2, 3, 5), lowres_cond_img=x) is x
    assert [p.numel() for p in unet.parameters()] == [1]
    torch.optim.AdamW(unet.parameters())
    assert unet.downsample_factor == 1 and unet.is_null


def test_null_unet_config_and_recast():
    unet = NullUnet()
    assert unet.recast(lowres_cond=False) is unet
    recast = unet.recast(lowres_cond=True, channels=1)
    assert isinstance(recast, NullUnet) and recast.lowres_cond and recast.channels == 1
    assert isinstance(unet_from_config(json.loads(json.dumps(recast.config))), NullUnet)
    with pytest.raises(ValueError, match="unknown"):
        unet.recast(dim=3)


@pytest.mark.parametrize(("cls", "dim", "mults", "efficient"), [
    (BaseUnet64, 512, [1, 2, 3, 4], False), (SRUnet256, 128, [1, 2, 4, 8], True),
    (SRUnet1024, 128, [1, 2, 4, 8], True),
])
def test_presets_carry_the_paper_settings_and_accept_overrides(cls, dim, mults, efficient):
    with torch.device("meta"):
        unet = cls()
        small = cls(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False)
    assert (unet.config["dim"], unet.config["dim_mults"], unet.config["memory_efficient"]) == (dim, mults, efficient)
    assert small.config["dim"] == 16 and small.config["type"] == cls.__name__
    assert isinstance(unet, Unet)
    with torch.device("meta"):
        assert type(unet_from_config(small.config)) is cls


def test_readme_records_the_preset_parameter_counts():
    """The README's table equals the counts of the presets built on the meta device."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    recorded = {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"\| (\w+) \| ([\d,]+) \|", readme)}
    with torch.device("meta"):
        counted = {cls.__name__: sum(p.numel() for p in cls().parameters())
                   for cls in (BaseUnet64, SRUnet256, SRUnet1024)}
    assert recorded == counted
    assert 0.5e9 < counted["BaseUnet64"] < 4e9  # the paper's 2B base model, same order of magnitude


def test_ignored_reference_keywords_change_nothing(h):
    """out_dim, num_image_tokens and layer_attns_add_text_cond are accepted and ignored, as by the reference."""
    plain = h.make(Unet, **h.tiny())
    other = h.make(Unet, **h.tiny(out_dim=5, num_image_tokens=9, layer_attns_add_text_cond=False))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in other.state_dict().items()}
    other.load_state_dict(plain.state_dict())
    x, t, text = torch.randn(1, 3, 8, 8), torch.rand(1), torch.randn(1, 3, 12)
    with torch.no_grad():
        assert torch.equal(plain(x, t, text_embeds=text), other(x, t, text_embeds=text))


def test_cast_model_parameters_is_recast(h):
    unet = Unet(**h.tiny())
    same = dict(lowres_cond=False, text_embed_dim=12, channels=3, channels_out=None, cond_on_text=True)
    assert unet.cast_model_parameters(**same) is unet
    sr = unet.cast_model_parameters(**{**same, "lowres_cond": True})
    assert sr.lowres_cond and sr.config == unet.recast(lowres_cond=True).config


def test_cast_model_parameters_with_the_resolved_defaults_returns_the_same_object(h):
    """As the reference compares with the resolved attributes: channels_out=3 is the default resolved from channels."""
    unet = Unet(**h.tiny())
    assert unet.channels_out == 3 and unet.config["channels_out"] is None
    same = dict(lowres_cond=False, text_embed_dim=12, channels=3, channels_out=3, cond_on_text=True)
    assert unet.cast_model_parameters(**same) is unet
    assert unet.recast(channels_out=3) is unet
    other = unet.cast_model_parameters(**{**same, "channels_out": 1})
    assert other is not unet and other.channels_out == 1
