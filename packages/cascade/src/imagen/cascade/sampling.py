"""Sampling a cascade: each stage's denoiser (self-conditioning, guidance, thresholding), its
sampler, inpainting, and the hand-over from one stage to the next.

``CascadeSampling`` is mixed into ``Cascade``; it uses the cascade's set-up (``unets``, ``stages``,
settings) and adds ``sample``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from imagen.diffusion import (
    classifier_free_guidance,
    dynamic_thresholding,
    get_sampler,
    randn_like,
    sample_repaint,
    static_clipping,
)

from .conditioning import batch_size_of, make_generators
from .config import per_unet
from .images import resize, to_pil_images


class CascadeSampling:
    """``sample`` and its parts, for ``Cascade``."""

    def _denoiser(self, index: int, cond_scale: float, batch: int) -> Callable:
        """Stage ``index``'s denoiser ``(x, sigma, **cond) -> x0_hat`` with self-conditioning,
        classifier-free guidance (one batched forward) and thresholding."""
        unet, stage = self.unets[index], self.stages[index]
        denoiser = stage.denoiser(unet)
        if unet.self_cond:
            denoiser = SelfConditioned(stage.denoiser, unet)
        if cond_scale != 1:
            null = {"cond_drop_mask": torch.ones(batch, dtype=torch.bool, device=self.device)}
            denoiser = classifier_free_guidance(denoiser, cond_scale, null)
        if self._setting("dynamic_thresholding", index):
            return dynamic_thresholding(denoiser, self._config.dynamic_thresholding_percentile)
        return static_clipping(denoiser)

    @torch.no_grad()
    def sample(
        self,
        texts=None,
        text_masks: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        video_frames: int | None = None,
        cond_images: torch.Tensor | None = None,
        cond_video_frames: torch.Tensor | None = None,
        post_cond_video_frames: torch.Tensor | None = None,
        inpaint_images: torch.Tensor | None = None,
        inpaint_videos: torch.Tensor | None = None,
        inpaint_masks: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
        init_images: torch.Tensor | None = None,
        skip_steps: int | tuple | None = None,
        batch_size: int = 1,
        cond_scale: float = 1.0,
        lowres_sample_noise_level: float | None = None,
        start_at_unet_number: int = 1,
        start_image_or_video: torch.Tensor | None = None,
        stop_at_unet_number: int | None = None,
        return_all_unet_outputs: bool = False,
        return_pil_images: bool = False,
        device: torch.device | str | None = None,
        use_tqdm: bool = True,
        sampler: str | tuple | None = None,
        steps: int | tuple | None = None,
        generator=None,
        callback: Callable | None = None,
    ):
        """Samples through the stages ``start_at_unet_number`` .. ``stop_at_unet_number``.

        Returns images (B, C, H, W) (videos (B, C, F, H, W)) in [0, 1] from the last stage, a list with
        every stage's output (``return_all_unet_outputs``) or PIL images (``return_pil_images``).
        Beyond the reference: per-stage ``sampler`` (any name of ``imagen.diffusion.SAMPLERS``) and
        ``steps``; ``generator`` an int seed gives the same sample i whatever the batch size.
        """
        if device is not None:
            self.to(device)
        device = self.device
        if not cond_scale >= 0:
            raise ValueError(f"cond_scale must be >= 0, got {cond_scale!r}")
        if cond_scale != 1 and not (self.condition_on_text and self.cond_drop_prob > 0):
            raise ValueError(
                f"cond_scale={cond_scale} needs a text-conditioned cascade trained with cond_drop_prob > 0 "
                f"(classifier-free guidance); this one has condition_on_text={self.condition_on_text}, "
                f"cond_drop_prob={self.cond_drop_prob}"
            )
        batch = None if texts is None and text_embeds is None else len(texts if texts is not None else text_embeds)
        inpaint = inpaint_images if inpaint_images is not None else inpaint_videos
        if inpaint is not None:
            batch = batch_size_of("inpaint_images", inpaint, batch)
            inpaint = self._to_model_range(self._check_pixels("inpaint_images", inpaint, self.num_unets - 1))
            inpaint_masks = check_inpaint_masks(inpaint_masks, inpaint).to(device)
            if inpaint.ndim == 5:
                video_frames = video_frames or inpaint.shape[2]
        batch = batch or batch_size
        text_embeds, text_masks = self._text_condition(texts, text_embeds, text_masks, batch)
        if self.is_video and video_frames is None:
            raise ValueError("a video cascade needs video_frames (the number of frames to sample)")
        first = self._index(start_at_unet_number)
        last = self._index(stop_at_unet_number or self.num_unets)
        if last < first:
            raise ValueError(f"stop_at_unet_number {last + 1} comes before start_at_unet_number {first + 1}")
        previous = None
        if first > 0:
            if start_image_or_video is None:
                raise ValueError(f"start_at_unet_number={first + 1} needs start_image_or_video (the low-res input)")
            batch_size_of("start_image_or_video", start_image_or_video, batch)
            previous = self._to_model_range(start_image_or_video)
        generators = make_generators(generator, batch, device)
        outputs = []
        for index in range(first, last + 1):
            previous = self._sample_stage(
                index,
                batch=batch,
                previous=previous,
                frames=self._frames(index, video_frames),
                cond=self._stage_cond(index, batch, text_embeds, text_masks, cond_images=cond_images,
                                      cond_video_frames=cond_video_frames,
                                      post_cond_video_frames=post_cond_video_frames),
                cond_scale=cond_scale,
                lowres_level=self._config.lowres_sample_noise_level
                if lowres_sample_noise_level is None
                else lowres_sample_noise_level,
                init=init_images,
                skip=per_unet(skip_steps, self.num_unets, "skip_steps")[index] if skip_steps is not None else 0,
                inpaint=(inpaint, inpaint_masks, inpaint_resample_times) if inpaint is not None else None,
                sampler=per_unet(sampler, self.num_unets, "sampler")[index] if sampler is not None else None,
                steps=per_unet(steps, self.num_unets, "steps")[index] if steps is not None else None,
                generators=generators,
                callback=callback,
                progress=use_tqdm,
            )
            outputs.append(self._to_output_range(previous))
        if return_pil_images:
            if self.is_video:
                raise ValueError("return_pil_images is for image cascades; a video cascade returns tensors")
            outputs = [to_pil_images(images) for images in outputs]
        return outputs if return_all_unet_outputs else outputs[-1]

    def _stage_cond(self, index, batch, text_embeds, text_masks, **pixels) -> dict:
        cond = {}
        if self.condition_on_text:
            cond.update(
                text_embeds=text_embeds,
                text_mask=text_masks,
                cond_drop_mask=torch.zeros(batch, dtype=torch.bool, device=self.device),
            )
        cond.update(self._pixel_conditions(index, batch, **pixels))
        return cond

    def _sample_stage(self, index, *, batch, previous, frames, cond, cond_scale, lowres_level, init, skip,
                      inpaint, sampler, steps, generators, callback, progress) -> torch.Tensor:
        """Runs one stage's sampler; returns its output in [-1, 1]."""
        unet, stage = self.unets[index], self.stages[index]
        if unet.is_null:
            raise ValueError(
                f"unet {index + 1} is a NullUnet placeholder and cannot sample; start_at_unet_number="
                f"{index + 2} with start_image_or_video gives the low-res input instead"
            )
        size = self.image_sizes[index]
        shape = (batch, self.channels, *(() if frames is None else (frames,)), size, size)
        if index > 0:
            lowres = self._resize(previous, index, frames)
            times = torch.full((batch,), float(lowres_level), device=self.device)
            cond = dict(cond, lowres_cond_img=self._lowres_augmentation(lowres, times, generators),
                        lowres_noise_times=times)
        sampler = sampler or self._setting("sampler", index) or stage.default_sampler
        options = stage.sampler_options() if sampler == stage.default_sampler else {}
        sigmas = stage.sigmas(steps or stage.sample_steps, self.device)[skip:]
        if len(sigmas) < 2:
            raise ValueError(f"skip_steps={skip} leaves no step to sample for unet {index + 1}")
        noise = randn_like(torch.zeros(shape, device=self.device), generators)
        x = noise * sigmas[0]
        if init is not None:
            x = x + self._resize(self._to_model_range(init), index, frames)
        denoiser = self._denoiser(index, cond_scale, batch)
        common = dict(cond=cond, generator=generators, callback=callback, progress=progress)
        if inpaint is not None:
            known, masks, resample_times = inpaint
            known = self._resize(known, index, frames)
            masks = resize_mask(masks, size, frames)
            # jump_length=1: every step is redone resample_times times, as in the reference
            return sample_repaint(denoiser, x, sigmas, known=known, mask=masks, resample_times=resample_times,
                                  jump_length=1,
                                  **common).clamp(-1, 1)
        return get_sampler(sampler)(denoiser, x, sigmas, **common, **options).clamp(-1, 1)


class SelfConditioned:
    """A stage denoiser for a self-conditioned unet: each call feeds the previous x0 estimate back."""

    def __init__(self, make_denoiser, unet):
        self.make_denoiser, self.unet, self.previous = make_denoiser, unet, None

    def __call__(self, x, sigma, **cond):
        if self.previous is None or self.previous.shape != x.shape:
            self.previous = torch.zeros_like(x)
        x0 = self.make_denoiser(functools.partial(self.unet, self_cond=self.previous))(x, sigma, **cond)
        self.previous = x0
        return x0


def check_inpaint_masks(masks: torch.Tensor | None, known: torch.Tensor) -> torch.Tensor:
    spatial = (known.shape[0], *known.shape[-2:])
    accepted = [spatial] + ([(known.shape[0], known.shape[2], *known.shape[-2:])] if known.ndim == 5 else [])
    if masks is None or tuple(masks.shape) not in accepted:
        got = None if masks is None else tuple(masks.shape)
        raise ValueError(f"inpaint_masks must have shape {' or '.join(map(str, accepted))}, got {got}")
    return masks.bool()


def resize_mask(masks: torch.Tensor, size: int, frames: int | None) -> torch.Tensor:
    resized = resize(masks.float().unsqueeze(1), size, frames=frames if masks.ndim == 4 else None)
    return resized.squeeze(1) > 0.5
