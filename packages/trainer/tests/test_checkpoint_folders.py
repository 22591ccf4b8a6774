"""Per-stage checkpoint folders (checkpoint_layout="folder"): layout, exact resume, the inference
export, integrity checks, rotation and partial-folder cleanup (single process; the two-process
runs are in test_checkpoint_folders_multiprocess.py)."""

import json
import os
import shutil

import pytest
import torch

from imagen.cascade import CheckpointError, Imagen, load_imagen_from_checkpoint
from imagen.trainer import ImagenTrainer


def _trainer(tiny_unet, **kwargs):
    torch.manual_seed(0)
    imagen = Imagen(condition_on_text=False, unets=(tiny_unet(dropout=0.1), tiny_unet(dropout=0.1)),
                    image_sizes=(8, 16), timesteps=5)
    options = dict(verbose=False, warmup_steps=2, seed=3, ema_update_after_step=1, ema_update_every=1,
                   checkpoint_layout="folder")
    return ImagenTrainer(imagen, **{**options, **kwargs})


def _steps(trainer, count, data_seed, unet_number=2):
    g = torch.Generator().manual_seed(data_seed)
    for _ in range(count):
        size = 8 if unet_number == 1 else 16
        trainer(torch.rand(3, 3, size, size, generator=g), unet_number=unet_number, max_batch_size=2)
        trainer.update(unet_number)


def test_folder_layout_and_resume_is_bit_exact(tmp_path, unet_factory):
    """2N steps straight == N steps, save as a folder, fresh trainer, load, N steps (dropout on):
    equal weights, EMA and optimizer state bit for bit; every stage has its own file."""
    n = 2
    straight = _trainer(unet_factory)
    _steps(straight, n, 0)
    _steps(straight, n, 1)

    first = _trainer(unet_factory)
    _steps(first, n, 0)
    folder = first.save(tmp_path / "ckpt", note="hello")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generators", "model.safetensors", "trainer.safetensors",
        "unet.1.optim", "unet.1.safetensors", "unet.2.optim", "unet.2.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no partial folder left
    del first
    resumed = _trainer(unet_factory)
    torch.rand(1000)
    state = resumed.load(tmp_path / "ckpt")
    assert state["note"] == "hello"
    _steps(resumed, n, 1)

    assert resumed.steps.tolist() == straight.steps.tolist() == [0, 2 * n]
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for index in straight.stages:
        sa, sb = straight.stages[index].optimizer.state_dict(), resumed.stages[index].optimizer.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for pid, values in sa["state"].items():
            for name, value in values.items():
                assert torch.equal(value, sb["state"][pid][name]), (index, pid, name)


def test_sampling_reads_the_ema_export(tmp_path, unet_factory):
    """load_imagen_from_checkpoint(folder) is the cascade through the EMA weights."""
    trainer = _trainer(unet_factory)
    _steps(trainer, 3, 0)
    trainer.save(tmp_path / "ckpt")
    cascade = load_imagen_from_checkpoint(tmp_path / "ckpt")
    ema = trainer.get_ema_unet(2).state_dict()
    for key, value in cascade.unets[1].state_dict().items():
        assert torch.equal(value, ema[key]), key
    assert not all(torch.equal(v, trainer.imagen.unets[1].state_dict()[k]) for k, v in ema.items())


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_saves(tmp_path_factory):
    """Folders ``a`` (after one step) and ``b`` (after two) of one run, written once per module."""
    from functools import partial

    from imagen.unets import Unet

    tiny_unet = partial(Unet, dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False,
                        layer_cross_attns=False, attn_heads=2, attn_dim_head=8)  # conftest's tiny_unet
    root = tmp_path_factory.mktemp("saves")
    trainer = _trainer(tiny_unet)
    _steps(trainer, 1, 0)
    trainer.save(root / "a")
    _steps(trainer, 1, 1)
    trainer.save(root / "b")
    return root


@pytest.fixture
def saves(two_saves, tmp_path):
    shutil.copytree(two_saves, tmp_path / "saves")
    return tmp_path / "saves"


@pytest.mark.parametrize("damaged", ["unet.2.safetensors", "unet.2.optim/__0_0.distcp", "generators/.metadata"])
def test_a_damaged_part_is_refused(saves, unet_factory, damaged):
    _flip_last_byte(saves / "a" / damaged)
    with pytest.raises(CheckpointError, match="corrupt"):
        _trainer(unet_factory).load(saves / "a")


def test_a_stage_file_from_another_save_is_refused(saves, unet_factory):
    os.replace(saves / "b" / "unet.2.safetensors", saves / "a" / "unet.2.safetensors")
    with pytest.raises(CheckpointError, match="mixes files of different saves"):
        _trainer(unet_factory).load(saves / "a")


def test_a_missing_data_file_is_refused(saves, unet_factory):
    (saves / "a" / "unet.2.optim" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match="manifest lists"):
        _trainer(unet_factory).load(saves / "a")


def test_rotation_resume_and_partial_cleanup(tmp_path, unet_factory):
    """checkpoint_every writes checkpoint.<steps>/ folders, keeps the newest, removes a dead save's
    partial folder, and a new trainer resumes from the newest folder."""
    trainer = _trainer(unet_factory, checkpoint_path=tmp_path, checkpoint_every=1, max_checkpoints_keep=2)
    stale = tmp_path / ".checkpoint.9.partial-999999999-0123abcd"
    stale.mkdir()
    (stale / "trainer.safetensors").write_bytes(b"torn")
    _steps(trainer, 3, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.2", "checkpoint.3"]
    resumed = _trainer(unet_factory, checkpoint_path=tmp_path)
    assert resumed.steps.tolist() == [0, 3]
    resumed.load_from_checkpoint_folder(last_total_steps=2)
    assert resumed.steps.tolist() == [0, 2]
    state = json.loads((tmp_path / "checkpoint.3" / "config.json").read_text())
    assert state["format"] == "imagen-cascade"


def _accelerate_fsdp(version):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(fsdp_version=version)
    return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin),
                           num_processes=2)


def test_layout_follows_fsdp2_and_fsdp1_is_refused():
    from imagen.trainer.checkpoints import check_layout

    assert check_layout(None) == "file"
    assert check_layout(None, accelerator=_accelerate_fsdp(2)) == "folder"
    with pytest.raises(ValueError, match="cannot hold FSDP2-sharded stages"):
        check_layout("file", accelerator=_accelerate_fsdp(2))
    with pytest.raises(ValueError, match="FSDP version 1 is not supported"):
        check_layout(None, accelerator=_accelerate_fsdp(1))
    with pytest.raises(ValueError, match="checkpoint_layout must be one of"):
        check_layout("folders")


def test_a_folder_save_never_replaces_foreign_files(tmp_path, unet_factory):
    """A checkpoint folder replaces what is at its path whole: a file or a folder of other files is
    refused (and left as it was); an earlier checkpoint folder or an empty folder is replaced."""
    trainer = _trainer(unet_factory)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for target in ("runs", "file"):
        with pytest.raises(ValueError, match="replaces what is at its path whole"):
            trainer.save(tmp_path / target)
    assert (tmp_path / "runs" / "notes.txt").read_text() == (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    trainer.save(tmp_path / "empty")
    trainer.save(tmp_path / "empty")  # over an earlier checkpoint folder
    assert (tmp_path / "empty" / "trainer.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "runs"]


def test_merging_folders_checks_its_sources(saves, unet_factory, tmp_path):
    """Two folders that both trained unet 2 are ambiguous until one is chosen; a folder and a file
    do not mix; a source of another cascade is refused naming the setting."""
    from imagen.trainer import merge_stage_checkpoints

    with pytest.raises(ValueError, match="unet 2 was trained in several sources"):
        merge_stage_checkpoints(tmp_path / "m", [saves / "a", saves / "b"])
    merge_stage_checkpoints(tmp_path / "m", [saves / "a", saves / "b"], stages={2: saves / "b"})
    assert (tmp_path / "m" / "unet.2.safetensors").read_bytes() == (saves / "b" / "unet.2.safetensors").read_bytes()
    assert _trainer(unet_factory).load(tmp_path / "m")["steps"] == [0, 2]
    other = _trainer(unet_factory, checkpoint_layout="file")
    other.save(tmp_path / "one.safetensors")
    with pytest.raises(ValueError, match="mix checkpoint files and per-stage checkpoint folders"):
        merge_stage_checkpoints(tmp_path / "n", [saves / "a", tmp_path / "one.safetensors"])
    torch.manual_seed(0)
    unets = (unet_factory(dropout=0.1), unet_factory(dropout=0.2))
    foreign = ImagenTrainer(Imagen(condition_on_text=False, unets=unets, image_sizes=(8, 16), timesteps=5,
                                   cond_drop_prob=0.5), verbose=False, checkpoint_layout="folder")
    foreign.save(tmp_path / "foreign")
    with pytest.raises(ValueError, match=r"not a run of the cascade .*\(cond_drop_prob: 0.1 vs 0.5; "
                                         r"unets\[1\].dropout: 0.1 vs 0.2\)"):
        merge_stage_checkpoints(tmp_path / "n", [saves / "a", tmp_path / "foreign"])
