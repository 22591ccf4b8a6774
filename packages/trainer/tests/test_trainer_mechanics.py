"""The trainer's mechanics on a toy cascade: chunking, updates, NaN handling, EMA, exact resume."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.trainer import ImagenTrainer, NonFiniteTrainingError, WarmupCosine, load_checkpoint


def _trainer(cascade, **kwargs):
    kwargs.setdefault("verbose", False)
    return ImagenTrainer(cascade, **kwargs)


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("max_batch_size", [1, 2, 3, 5])
def test_max_batch_size_gives_the_whole_batch_gradients(max_batch_size, toy_cascade):
    torch.manual_seed(0)
    cascade = toy_cascade(noisy=False)
    images = torch.rand(5, 3, 4, 4)
    embeds = torch.randn(5, 2, 3)
    trainer = _trainer(cascade)
    whole = trainer(images, text_embeds=embeds, unet_number=1)
    g_whole = _grads(cascade.unets[0])
    trainer.optimizers[0].zero_grad()
    chunked = trainer(images, text_embeds=embeds, unet_number=1, max_batch_size=max_batch_size)
    g_chunked = _grads(cascade.unets[0])
    assert chunked == pytest.approx(whole, rel=1e-5)
    for a, b in zip(g_whole, g_chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sizes = [c["batch"] for c in cascade.calls[1:]]
    assert sizes == [min(max_batch_size, 5 - s) for s in range(0, 5, max_batch_size)]
    assert all(c["text_embeds"].shape[0] == c["batch"] for c in cascade.calls)


def test_texts_are_chunked_with_images(toy_cascade):
    cascade = toy_cascade()
    _trainer(cascade)(torch.rand(3, 3, 4, 4), texts=["a", "b", "c"], unet_number=2, max_batch_size=2, ignore_time=True)
    assert [c["texts"] for c in cascade.calls] == [["a", "b"], ["c"]]
    assert all(c["ignore_time"] is True for c in cascade.calls)


def test_update_steps_and_changes_only_that_unet(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade)
    before = [p.clone() for p in cascade.parameters()]
    trainer(torch.rand(2, 3, 4, 4), unet_number=2)
    assert trainer.update(unet_number=2)
    assert trainer.steps.tolist() == [0, 1] and trainer.num_steps_taken() == 1
    after = list(cascade.parameters())
    n1 = len(list(cascade.unets[0].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before[:n1], after[:n1]))
    assert any(not torch.equal(a, b) for a, b in zip(before[n1:], after[n1:]))


def test_unet_number_errors(toy_cascade):
    trainer = _trainer(toy_cascade(null_first=True))
    with pytest.raises(ValueError, match="NullUnet"):
        trainer(torch.rand(1, 3, 4, 4), unet_number=1)
    with pytest.raises(ValueError, match="unet_number"):
        trainer(torch.rand(1, 3, 4, 4), unet_number=3)
    with pytest.raises(ValueError, match="unet_number must be given"):
        trainer(torch.rand(1, 3, 4, 4))
    only = _trainer(toy_cascade(), only_train_unet_number=2)
    only(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="only_train_unet_number"):
        only(torch.rand(1, 3, 4, 4), unet_number=1)


def test_bad_arguments(toy_cascade):
    with pytest.raises(ValueError, match="precision"):
        _trainer(toy_cascade(), precision="fp8")
    with pytest.raises(ValueError, match="lr gives 3"):
        _trainer(toy_cascade(), lr=(1e-3, 1e-3, 1e-3))
    with pytest.raises(TypeError, match="unexpected"):
        _trainer(toy_cascade(), not_an_option=1)
    with pytest.raises(TypeError, match="checkpoint_fs"):
        _trainer(toy_cascade(), checkpoint_path="ckpts", checkpoint_fs="s3")
    with pytest.raises(TypeError, match="fs_kwargs"):
        _trainer(toy_cascade(), checkpoint_path="memory://x", fs_kwargs=["a"])
    with pytest.raises(ValueError, match="max_checkpoints_keep"):
        _trainer(toy_cascade(), max_checkpoints_keep="all")


def test_per_unet_lr_and_warmup_cosine(toy_cascade):
    trainer = _trainer(toy_cascade(), lr=(1e-3, 2e-3), warmup_steps=(4, None), cosine_decay_max_steps=(None, 10))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(2e-3)
    for _ in range(3):
        trainer(torch.rand(1, 3, 4, 4), unet_number=1)
        trainer.update(1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)


@given(st.integers(1, 50), st.integers(1, 50), st.integers(0, 120))
def test_warmup_cosine_closed_form(warmup, total, step):
    f = WarmupCosine(warmup, total)(step)
    expected = min(1, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    assert f == pytest.approx(expected)
    assert WarmupCosine()(step) == 1.0


def test_optimizer_keywords_go_to_adam_as_in_the_reference(toy_cascade):
    """The reference passes every other keyword to torch.optim.Adam: weight_decay is Adam's (L2 on
    every parameter), amsgrad / decoupled_weight_decay... pass through; group_wd_params does nothing."""
    trainer = _trainer(toy_cascade(), weight_decay=0.1, amsgrad=True, group_wd_params=True)
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.1 and group["amsgrad"] is True and group["decoupled_weight_decay"] is False
    assert len(group["params"]) == len(list(trainer.imagen.unets[0].parameters()))
    decoupled = _trainer(toy_cascade(), weight_decay=0.1, decoupled_weight_decay=True)
    assert decoupled.optimizers[1].param_groups[0]["decoupled_weight_decay"] is True
    _assert_steps_as_torch_adam(toy_cascade, weight_decay=0.1, amsgrad=True)
    with pytest.raises(TypeError, match=r"torch\.optim\.Adam"):
        _trainer(toy_cascade(), amsgrad_typo=True)


def test_fused_adam_passes_through_and_steps_as_torch(toy_cascade):
    """``fused=True`` (the one-kernel Adam the README names as the faster CPU step) reaches Adam and
    steps as torch's fused Adam on the same gradients."""
    _assert_steps_as_torch_adam(toy_cascade, fused=True)


def _assert_steps_as_torch_adam(toy_cascade, **adam_keywords):
    """One trainer step with ``adam_keywords`` equals torch's Adam with the same keywords on the same gradients."""
    cascade = toy_cascade(noisy=False)
    trainer = _trainer(cascade, lr=1e-2, **adam_keywords)
    group = trainer.optimizers[0].param_groups[0]
    assert all(group[key] == value for key, value in adam_keywords.items())
    before = [p.detach().clone() for p in cascade.unets[0].parameters()]
    twin = [p.clone().requires_grad_() for p in before]
    trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    for p, ours in zip(twin, cascade.unets[0].parameters()):
        p.grad = ours.grad.clone()
    trainer.update(1)
    torch.optim.Adam(twin, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, **adam_keywords).step()
    for ours, expected in zip(cascade.unets[0].parameters(), twin):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert not all(torch.equal(p, old) for p, old in zip(twin, before))  # the step moved the weights


def test_nonfinite_loss_skips_the_step_and_stops_after_a_run(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade, max_consecutive_nonfinite=3)
    weights = [p.clone() for p in cascade.parameters()]
    bad = torch.full((2, 3, 4, 4), float("nan"))
    for expected in (1, 2):
        trainer(bad, unet_number=1)
        assert trainer.update(1) is False
        assert trainer.nonfinite_steps[0] == expected
    assert trainer.steps.tolist() == [0, 0]
    assert all(torch.equal(a, b) for a, b in zip(weights, cascade.parameters()))
    trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    assert trainer.update(1) is True  # a good step resets the run
    for _ in range(2):
        trainer(bad, unet_number=1)
        trainer.update(1)
    trainer(bad, unet_number=1)
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive"):
        trainer.update(1)
    assert all(torch.isfinite(p).all() for p in cascade.parameters())


def test_max_grad_norm_clips(toy_cascade):
    cascade = toy_cascade(noisy=False)
    trainer = _trainer(cascade, max_grad_norm=1e-3, lr=1.0)
    trainer(torch.rand(2, 3, 4, 4) * 100, unet_number=1)
    params = list(cascade.unets[0].parameters())
    trainer.scalers[0].unscale_(trainer.optimizers[0])
    torch.nn.utils.clip_grad_norm_(params, 1e-3)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm <= 1e-3 * 1.01


def test_ema_follows_and_sample_uses_it(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade, ema_beta=0.5, ema_update_after_step=0, ema_update_every=1, lr=1e-2)
    for _ in range(4):
        trainer(torch.rand(2, 3, 4, 4), unet_number=2)
        trainer.update(2)
    ema = trainer.emas["1"].ema_model
    assert not torch.equal(ema.conv.weight, cascade.unets[1].conv.weight)
    online = cascade.unets[1].conv.weight.clone()
    expected = ema(torch.zeros(1, 3, 4, 4)).sigmoid()
    torch.testing.assert_close(trainer.sample(batch_size=1), expected)
    assert torch.equal(cascade.unets[1].conv.weight, online)  # restored after sampling
    torch.testing.assert_close(trainer.sample(batch_size=1, use_ema=False), cascade.sample(batch_size=1))


def _run(trainer, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        trainer(torch.rand(3, 3, 4, 4, generator=g), unet_number=2, max_batch_size=2)
        trainer.update(2)


def test_exact_resume_on_the_toy_cascade(tmp_path, toy_cascade):
    def make():
        torch.manual_seed(7)
        return _trainer(toy_cascade(), ema_update_after_step=1, ema_update_every=1, warmup_steps=3, seed=5)

    straight = make()
    _run(straight, 4, 0)
    _run(straight, 4, 1)
    first = make()
    _run(first, 4, 0)
    first.save(tmp_path / "checkpoint.pt")
    resumed = make()
    resumed.load(tmp_path / "checkpoint.pt")
    _run(resumed, 4, 1)
    assert resumed.steps.tolist() == straight.steps.tolist() == [0, 8]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = straight.optimizers[1].state_dict(), resumed.optimizers[1].state_dict()
    for pid in s1["state"]:
        for key in s1["state"][pid]:
            assert torch.equal(s1["state"][pid][key], s2["state"][pid][key])


def test_checkpoint_layout_and_load_imagen_keys(tmp_path, toy_cascade):
    trainer = _trainer(toy_cascade(null_first=True))
    trainer(torch.rand(2, 3, 4, 4), unet_number=2)
    trainer.update(2)
    ckpt = load_checkpoint(trainer.save(tmp_path / "checkpoint.pt"))
    assert set(ckpt.with_prefix("imagen.")) == set(trainer.imagen.state_dict())
    assert set(ckpt.with_prefix("ema_imagen.")) == set(trainer.imagen.state_dict())
    assert ckpt.imagen_config == trainer.imagen.config.to_json()
    assert ckpt.trainer_state["steps"] == [0, 1]
    assert any(k.startswith("optim.1.") for k in ckpt.tensors)


def test_save_refuses_nonfinite_weights(tmp_path, toy_cascade):
    trainer = _trainer(toy_cascade())
    with torch.no_grad():
        trainer.imagen.unets[0].conv.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match="non-finite"):
        trainer.save(tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_load_refuses_another_config(tmp_path, toy_cascade):
    _trainer(toy_cascade(num_unets=2)).save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="config"):
        _trainer(toy_cascade(num_unets=3)).load(tmp_path / "c.pt")


def test_checkpoint_folder_rotation_and_resume(tmp_path, toy_cascade):
    trainer = _trainer(toy_cascade(), checkpoint_path=tmp_path, checkpoint_every=2, max_checkpoints_keep=2)
    _run(trainer, 6, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.4.safetensors", "checkpoint.6.safetensors"]
    resumed = _trainer(toy_cascade(), checkpoint_path=tmp_path)
    assert resumed.steps.tolist() == [0, 6]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(precision, toy_cascade):
    trainer = _trainer(toy_cascade(), precision=precision)
    trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    trainer.update(1)
    assert trainer.scalers[0].is_enabled() == (precision == "fp16")
    assert all(p.dtype == torch.float32 for p in trainer.imagen.parameters())


# ------------------------------------------------------------------------ accelerate machinery


def test_only_the_trained_stage_is_prepared_and_lazily(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade)
    assert all(stage.prepared_unet is None for stage in trainer.stages.values())
    assert trainer.accelerator._models == []
    trainer(torch.rand(3, 3, 4, 4), unet_number=2, max_batch_size=2)
    stage = trainer.stages[1]
    assert trainer.stages[0].prepared_unet is None and stage.prepared_unet is not None
    assert trainer.accelerator._models == [stage.prepared_unet]
    assert [opt.optimizer for opt in trainer.accelerator._optimizers] == [trainer.optimizers[1]]
    assert cascade.wrapped_calls == [stage.prepared_unet] * 2  # the cascade called the prepared module
    assert stage.unwrapped_unet(trainer.accelerator) is cascade.unets[1]
    trainer.update(2)
    trainer(torch.rand(3, 3, 4, 4), unet_number=2)
    assert len(trainer.accelerator._models) == 1  # prepared once


def _spy_on_accelerator(monkeypatch, accelerator):
    """Records, for each ``accelerator.backward``, whether it ran inside ``accelerator.no_sync`` and
    the tensor it got; and the models no_sync and clip_grad_norm_ were called with."""
    import contextlib

    log = {"backward": [], "no_sync": [], "clip": 0}
    inside = [False]
    no_sync, backward, clip = accelerator.no_sync, accelerator.backward, accelerator.clip_grad_norm_

    @contextlib.contextmanager
    def spy_no_sync(model):
        log["no_sync"].append(model)
        inside[0] = True
        with no_sync(model):
            yield
        inside[0] = False

    def spy_backward(loss, **kwargs):
        log["backward"].append((inside[0], loss.detach().clone()))
        return backward(loss, **kwargs)

    def spy_clip(*args, **kwargs):
        log["clip"] += 1
        return clip(*args, **kwargs)

    monkeypatch.setattr(accelerator, "no_sync", spy_no_sync)
    monkeypatch.setattr(accelerator, "backward", spy_backward)
    monkeypatch.setattr(accelerator, "clip_grad_norm_", spy_clip)
    return log


def test_chunks_accumulate_without_sync_and_sync_on_the_last(monkeypatch, toy_cascade):
    trainer = _trainer(toy_cascade(), max_grad_norm=1.0)
    log = _spy_on_accelerator(monkeypatch, trainer.accelerator)
    trainer(torch.rand(5, 3, 4, 4), unet_number=1, max_batch_size=2)
    assert [inside for inside, _ in log["backward"]] == [True, True, False]
    assert log["no_sync"] == [trainer.stages[0].prepared_unet] * 2
    assert log["clip"] == 0
    assert trainer.update(1)
    assert log["clip"] == 1


def test_fp16_backward_gets_the_scaled_loss(monkeypatch, toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade, precision="fp16")
    log = _spy_on_accelerator(monkeypatch, trainer.accelerator)
    before = [p.clone() for p in cascade.unets[0].parameters()]
    loss = trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    scale = trainer.scalers[0].get_scale()
    assert scale > 1 and log["backward"][0][1].item() == pytest.approx(loss * scale, rel=1e-6)
    assert trainer.update(1)
    after = list(cascade.unets[0].parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.fixture
def fresh_accelerate_state():
    """A clean accelerate state, so that a test may build an Accelerator with other settings."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("mixed", ["bf16", "fp16"])
def test_precision_follows_the_accelerator(mixed, fresh_accelerate_state, toy_cascade):
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mixed, cpu=True)
    trainer = _trainer(toy_cascade(), accelerator=accelerator)
    assert trainer.precision == mixed
    # accelerate keeps no fp16 scaler on CPU: the trainer's own one scales the loss
    assert accelerator.scaler is None and trainer.scalers[0].is_enabled() == (mixed == "fp16")
    trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    assert trainer.update(1)
    other = "bf16" if mixed == "fp16" else "fp16"
    with pytest.raises(ValueError, match="conflicts with the accelerator's mixed_precision"):
        _trainer(toy_cascade(), accelerator=accelerator, precision=other)


def test_accelerate_gradient_accumulation_steps_on_every_kth_update(fresh_accelerate_state, toy_cascade):
    """accelerate's gradient_accumulation_steps=2: two calls + updates on halves of a batch take one
    step, equal bit for bit to one call on the whole batch in two chunks (each half's loss is
    divided by 2 either way)."""
    from accelerate.state import AcceleratorState, GradientState

    images = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    whole = _trainer(toy_cascade(), seed=1)
    whole(images, unet_number=1, max_batch_size=2)
    assert whole.update(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.manual_seed(0)
    accumulated = _trainer(toy_cascade(), seed=1, accelerate_gradient_accumulation_steps=2)
    assert accumulated.accelerator.gradient_accumulation_steps == 2
    accumulated(images[:2], unet_number=1)
    assert not accumulated.update(1) and accumulated.steps.tolist() == [0, 0]  # accumulating
    accumulated(images[2:], unet_number=1)
    assert accumulated.update(1) and accumulated.steps.tolist() == [1, 0]
    for a, b in zip(whole.imagen.parameters(), accumulated.imagen.parameters()):
        assert torch.equal(a, b)


def test_nonfinite_gradient_with_a_finite_loss_is_skipped(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade)
    weights = [p.clone() for p in cascade.parameters()]
    trainer(torch.rand(2, 3, 4, 4), unet_number=1)
    cascade.unets[0].conv.weight.grad[0, 0] = float("inf")
    assert trainer.update(1) is False and trainer.nonfinite_steps == [1, 0]
    assert all(torch.equal(a, b) for a, b in zip(weights, cascade.parameters()))
    assert all(p.grad is None for p in cascade.parameters())
