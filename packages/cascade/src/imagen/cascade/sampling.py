"""Sampling a cascade: one plan per stage (``StagePlan``, built once by ``sampling_plan``), then each
stage's x0 model (guidance on the network output, thresholding, self-conditioning), its sampler,
inpainting, and the hand-over from one stage to the next.

``CascadeSampling`` is mixed into ``Cascade``; it uses the cascade's set-up (``unets``, ``stages``,
settings) and adds ``sampling_plan`` and ``sample``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from imagen.diffusion import (
    check_sampler_steps,
    classifier_free_guidance,
    dynamic_thresholding,
    sampler_name,
    static_clipping,
)

from .checks import check_keywords
from .conditioning import batch_size_of, make_generators
from .config import per_unet
from .images import resize, to_pil_images
from .stages import Inpainting


@attrs.frozen(kw_only=True)
class StagePlan:
    """Everything one stage's sampling needs, resolved once from ``sample``'s keywords and the config.

    ``levels`` is the stage's full grid (times from 1 to 0 for the time-grid ``ddpm`` of a Gaussian
    stage, EDM sigmas ending in 0 otherwise) spaced by ``schedule`` down to ``sigma_floor`` (None:
    the stage's sigma_min); sampling starts at ``levels[skip_steps]``.
    ``init_images`` (B, C, [F,] H, W) in the caller's range, or None. ``refine``: the stage starts
    from the previous stage's output noised to ``levels[skip_steps]`` (``refine_from_step``).
    """

    unet_number: int
    image_size: int
    frames: int | None
    sampler: str
    schedule: str = "time"
    sigma_floor: float | None = None
    sampler_options: dict = attrs.field(factory=dict)
    steps: int
    skip_steps: int
    refine: bool = False
    cond_scale: float
    dynamic_threshold: bool
    lowres_noise_level: float | None
    sigma_min: float | None = None
    sigma_max: float | None = None
    levels: torch.Tensor = attrs.field(eq=False, repr=False)
    init_images: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False)


SCHEDULE_NAMES = ("default", "time", "karras", "exponential", "sech")


def resolve_schedule(stage, sampler: str, steps: int, requested: str | None) -> tuple[str, float | None]:
    """(schedule, sigma floor) of one stage. Asked nothing ("default" or None): the stage's default
    sampler keeps the reference's grid (Imagen: its time grid; ElucidatedImagen: Karras); any
    other sampler gets the spacing tuned on the oracle bench (bench/diffusion.md): at <= 10 steps
    sech sigmas ending at 0.05 (the last nonzero level; below it few steps are wasted), at <= 20
    sech sigmas, beyond that Karras."""
    if requested is not None and requested not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {list(SCHEDULE_NAMES)} (or one per unet), got {requested!r}")
    if requested not in (None, "default"):
        return requested, None
    if sampler == stage.default_sampler:
        return stage.reference_schedule, None
    if steps <= 10:
        return "sech", 0.05
    return ("sech", None) if steps <= 20 else ("karras", None)


def _per_stage(value, num_unets: int, name: str) -> tuple:
    """A sample() keyword as one value per unet: a list or tuple must have one entry per unet."""
    if isinstance(value, list):
        value = tuple(value)
    return per_unet(value, num_unets, name)


class Autocast:
    """A network run under ``torch.autocast`` in ``dtype`` (bf16 or fp16), its output back in
    float32: the sampler's state, guidance and thresholding stay in fp32."""

    def __init__(self, net: Callable, dtype: torch.dtype, device_type: str):
        self.net, self.dtype, self.device_type = net, dtype, device_type

    def __call__(self, x, noise_cond, **cond):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(x, noise_cond, **cond)
        return out.float()


SAMPLING_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16)


def check_sampling_dtype(dtype) -> torch.dtype | None:
    if dtype not in SAMPLING_DTYPES:
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    return None if dtype == torch.float32 else dtype


class SelfConditioned:
    """An x0 model for a self-conditioned unet: each call gets the previous call's (guided,
    thresholded) x0 estimate as ``self_cond`` (None on the first call), as the reference feeds it."""

    def __init__(self, x0_model: Callable):
        self.x0_model, self.previous = x0_model, None

    def __call__(self, x, level, **cond):
        self.previous = self.x0_model(x, level, self_cond=self.previous, **cond)
        return self.previous


class CascadeSampling:
    """``sampling_plan``, ``sample`` and their parts, for ``Cascade``."""

    # --------------------------------------------------------------------------------- the plan

    def sampling_plan(
        self,
        *,
        video_frames: int | None = None,
        cond_scale=1.0,
        init_images=None,
        skip_steps=None,
        refine_from_step=None,
        lowres_sample_noise_level: float | None = None,
        start_at_unet_number: int = 1,
        stop_at_unet_number: int | None = None,
        sigma_min=None,
        sigma_max=None,
        sampler=None,
        steps=None,
        schedule=None,
        device=None,
        start_image_or_video=None,
        **sample_only,
    ) -> list[StagePlan]:
        """The stages ``sample`` runs with these keywords, each fully resolved (see ``StagePlan``).

        Per-unet keywords (``cond_scale``, ``init_images``, ``skip_steps``, ``sigma_min``,
        ``sigma_max``, ``sampler``, ``steps``, ``schedule``) take one value for every stage or a list/tuple
        with one entry per unet, as in the reference. ``schedule`` spaces the stage's levels: "time"
        (Imagen stages: the reference's time grid), "karras", "exponential", "sech", or "default"/None
        (see ``resolve_schedule``). ``refine_from_step`` (beyond the reference; None or one per unet):
        step k makes a stage start from the previous stage's output (upsampled; for the first stage
        sampled, ``start_image_or_video``) noised to the level of its step k and run the remaining
        steps (SDEdit), instead of drawing from noise; with that stage's ``init_images`` it refines them
        instead (img2img); it excludes ``skip_steps`` on that stage. A step count below the sampler's
        ``imagen.diffusion.MIN_STEPS`` (heun, dpmpp_3m) is a ValueError when ``steps`` asks for it or
        the sampler is not the stage's default (the configured default, e.g. ElucidatedImagen's Heun
        at num_sample_steps, runs as the reference does). ``sample``'s other keywords are
        accepted and ignored, so ``sampling_plan(**sample_kwargs)`` works; anything else is a TypeError.
        """
        unknown = sorted(set(sample_only) - _SAMPLE_ONLY_KEYWORDS)
        if unknown:
            raise TypeError(f"sampling_plan() got unknown keywords {unknown}; it takes sample()'s keywords")
        n = self.num_unets
        first = self._index(start_at_unet_number)
        last = self._index(stop_at_unet_number or n)
        if last < first:
            raise ValueError(f"stop_at_unet_number {last + 1} comes before start_at_unet_number {first + 1}")
        device = torch.device(device) if device is not None else self.device
        scales = _per_stage(cond_scale, n, "cond_scale")
        inits = _per_stage(init_images, n, "init_images")
        skips = _per_stage(skip_steps, n, "skip_steps")
        refines = _per_stage(refine_from_step, n, "refine_from_step")
        samplers = _per_stage(sampler, n, "sampler")
        stepss = _per_stage(steps, n, "steps")
        schedules = _per_stage(schedule, n, "schedule")
        mins, maxs = _per_stage(sigma_min, n, "sigma_min"), _per_stage(sigma_max, n, "sigma_max")
        if self.is_video and video_frames is None:
            raise ValueError("a video cascade needs video_frames (the number of frames to sample)")
        level = self._config.lowres_sample_noise_level if lowres_sample_noise_level is None \
            else float(lowres_sample_noise_level)
        plans = []
        for index in range(first, last + 1):
            stage = self.stages[index]
            if (mins[index] is not None or maxs[index] is not None) and not hasattr(stage, "sigma_max"):
                raise ValueError("sigma_min / sigma_max are ElucidatedImagen sample keywords; Imagen stages "
                                 "sample on their time grid")
            name = sampler_name(samplers[index] or self._setting("sampler", index) or stage.default_sampler)
            count = stepss[index] if stepss[index] is not None else stage.sample_steps
            skip = skips[index] or 0
            if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < count:
                raise ValueError(f"skip_steps for unet {index + 1} must be an int in [0, {count}), got {skip!r}")
            refine = refines[index] is not None
            if refine:
                skip = self._refine_start(refines[index], index, count, first, start_image_or_video,
                                          has_init=inits[index] is not None, skip=skip)
            if stepss[index] is not None or name != stage.default_sampler:  # not the reference's own path
                check_sampler_steps(name, count)
            spacing, floor = resolve_schedule(stage, name, count, schedules[index])
            options = stage.sampler_options(count) if name == stage.default_sampler else {}
            plans.append(StagePlan(
                unet_number=index + 1,
                image_size=self.image_sizes[index],
                frames=self._frames(index, video_frames),
                sampler=name,
                schedule=spacing,
                sigma_floor=floor,
                sampler_options=options,
                steps=count,
                skip_steps=skip,
                refine=refine,
                cond_scale=self._checked_cond_scale(scales[index]),
                dynamic_threshold=bool(self._setting("dynamic_thresholding", index)),
                lowres_noise_level=level if index > 0 else None,
                sigma_min=mins[index],
                sigma_max=maxs[index],
                levels=stage.levels(name, count, device, sigma_min=mins[index], sigma_max=maxs[index], schedule=spacing,
                                    sigma_floor=floor),
                init_images=inits[index],
            ))
        return plans

    def _refine_start(self, step, index: int, count: int, first: int, start_image, *, has_init: bool,
                      skip: int) -> int:
        """The checked ``refine_from_step`` of unet ``index + 1``: the step it starts at."""
        name = f"refine_from_step for unet {index + 1}"
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < count:
            raise ValueError(f"{name} must be None or an int in [0, {count}) (its steps), got {step!r}")
        if not has_init and index == first and (index == 0 or start_image is None):
            raise ValueError(f"{name}: there is no image to refine (unet {index + 1} is the first stage sampled; "
                             "give its init_images, or start_image_or_video with start_at_unet_number > 1)")
        if skip:
            raise ValueError(f"{name} replaces skip_steps on that unet: give one or the other")
        return step

    def _checked_cond_scale(self, scale) -> float:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale < float("inf"):
            raise ValueError(f"cond_scale must be a finite number >= 0 (or one per unet), got {scale!r}")
        if scale != 1 and not self.cond_drop_prob > 0:
            raise ValueError(
                f"cond_scale={scale} needs a cascade trained with cond_drop_prob > 0 (classifier-free "
                f"guidance); this one has cond_drop_prob={self.cond_drop_prob}"
            )
        if scale != 1 and not self.condition_on_text:
            _warn_once("cond_scale != 1 on a cascade with condition_on_text=False is ignored (as in the "
                       "reference, guidance without text changes nothing)")
            return 1.0
        return float(scale)

    # ------------------------------------------------------------------------------- sampling

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
        inpaint_videos: torch.Tensor | None = None,
        inpaint_images: torch.Tensor | None = None,
        inpaint_masks: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
        init_images=None,
        skip_steps=None,
        sigma_min=None,
        sigma_max=None,
        refine_from_step=None,
        batch_size: int = 1,
        cond_scale=1.0,
        cfg_remove_parallel_component: bool = True,
        cfg_keep_parallel_frac: float = 0.0,
        lowres_sample_noise_level: float | None = None,
        start_at_unet_number: int = 1,
        start_image_or_video: torch.Tensor | None = None,
        stop_at_unet_number: int | None = None,
        return_all_unet_outputs: bool = False,
        return_pil_images: bool = False,
        use_tqdm: bool = True,
        use_one_unet_in_gpu: bool = True,
        device: torch.device | str | None = None,
        sampler=None,
        steps=None,
        schedule=None,
        dtype=None,
        compile: bool | dict = False,
        generator=None,
        callback: Callable | None = None,
    ):
        """Samples through the stages ``start_at_unet_number`` .. ``stop_at_unet_number``.

        Every keyword of the reference's ``sample`` with its meaning (``cond_scale``, ``init_images``,
        ``skip_steps``, ``sigma_min``/``sigma_max`` one value or one per unet; guidance removes the
        update's part parallel to the conditional output unless ``cfg_remove_parallel_component=False``;
        ``use_one_unet_in_gpu`` keeps only the active stage on an accelerator). Returns images
        (B, C, H, W) (videos (B, C, F, H, W)) in [0, 1] from the last stage, a list with every stage's
        output (``return_all_unet_outputs``) or PIL images (``return_pil_images``). Beyond the
        reference: per-stage ``sampler`` (any name of ``imagen.diffusion.SAMPLERS``), ``steps``,
        ``schedule`` (the spacing of the levels) and ``refine_from_step`` (a later stage refines the
        upsampled output of the one before from step k, see ``sampling_plan``); ``dtype=torch.bfloat16`` (or
        float16) runs the U-Nets under autocast, the sampler state, guidance and thresholding in fp32;
        ``compile=True`` (or a dict of ``torch.compile`` keywords) runs each U-Net compiled, kept for
        later calls (on a CPU ``{"options": {"freezing": True}}`` is about 1.1x faster); ``generator``
        an int seed gives the same sample i whatever the batch size.
        """
        autocast_dtype = check_sampling_dtype(dtype)
        compile_options = compile_options_of(compile)
        checked = check_keywords(  # once per call, before any stage runs (checks.py)
            self, cond_scale=cond_scale, lowres_sample_noise_level=lowres_sample_noise_level, steps=steps,
            batch_size=batch_size, video_frames=video_frames, generator=generator, text_embeds=text_embeds,
            start_at_unet_number=start_at_unet_number, stop_at_unet_number=stop_at_unet_number,
            cond_images=cond_images, cond_video_frames=cond_video_frames, post_cond_video_frames=post_cond_video_frames,
            inpaint_images=inpaint_images, inpaint_videos=inpaint_videos, init_images=init_images,
            start_image_or_video=start_image_or_video,
        )
        cond_images, cond_video_frames, post_cond_video_frames = (
            checked["cond_images"], checked["cond_video_frames"], checked["post_cond_video_frames"])
        inpaint_images, inpaint_videos, init_images = (
            checked["inpaint_images"], checked["inpaint_videos"], checked["init_images"])
        start_image_or_video = checked["start_image_or_video"]
        lowres_sample_noise_level = checked["lowres_sample_noise_level"]
        if device is not None:
            self.to(device)
        device = self.device
        if not self.condition_on_text and texts is not None:
            _warn_once("texts are ignored: this cascade has condition_on_text=False (as in the reference)")
            texts = None
        batch = None if texts is None and text_embeds is None else len(texts if texts is not None else text_embeds)
        inpaint = inpaint_images if inpaint_images is not None else inpaint_videos
        if inpaint is not None:
            inpaint = _as_float_images(inpaint)
            if batch is None and batch_size != 1:
                batch = batch_size
            batch = batch_size_of("inpaint_images", inpaint, batch)
            self._check_pixels("inpaint_images", inpaint, self.num_unets - 1)
            inpaint_masks = check_inpaint_masks(inpaint_masks, inpaint).to(device)
            if inpaint.ndim == 5:
                video_frames = inpaint.shape[2]
        elif inpaint_masks is not None:
            raise ValueError("inpaint_masks need inpaint_images (or inpaint_videos)")
        batch = batch or batch_size
        text_embeds, text_masks = self._text_condition(texts, text_embeds, text_masks, batch)
        plans = self.sampling_plan(
            video_frames=video_frames, cond_scale=cond_scale, init_images=init_images, skip_steps=skip_steps,
            lowres_sample_noise_level=lowres_sample_noise_level, start_at_unet_number=start_at_unet_number,
            stop_at_unet_number=stop_at_unet_number, sigma_min=sigma_min, sigma_max=sigma_max, sampler=sampler,
            steps=steps, schedule=schedule, device=device, refine_from_step=refine_from_step,
            start_image_or_video=start_image_or_video,
        )
        previous = None
        if plans[0].unet_number > 1:
            if start_image_or_video is None:
                raise ValueError(f"start_at_unet_number={plans[0].unet_number} needs start_image_or_video "
                                 "(the low-res input)")
            batch_size_of("start_image_or_video", start_image_or_video, batch)
            index = plans[0].unet_number - 2
            previous = self._resize(_as_float_images(start_image_or_video).to(device), index,
                                    self._frames(index, video_frames))
        cond_images = None if cond_images is None else _as_float_images(cond_images)
        generators = make_generators(generator, batch, device)
        guidance = dict(remove_parallel_component=cfg_remove_parallel_component,
                        keep_parallel_frac=cfg_keep_parallel_frac, autocast_dtype=autocast_dtype,
                        compile_options=compile_options)
        outputs = []
        for plan in plans:
            index = plan.unet_number - 1
            with self._one_unet_on(index, enabled=use_one_unet_in_gpu):
                cond = self._stage_cond(index, batch, text_embeds, text_masks, cond_images=cond_images,
                                        cond_video_frames=cond_video_frames,
                                        post_cond_video_frames=post_cond_video_frames)
                previous = self._sample_stage(plan, batch=batch, previous=previous, cond=cond, guidance=guidance,
                                              inpaint=(inpaint, inpaint_masks, inpaint_resample_times),
                                              generators=generators, callback=callback, progress=use_tqdm)
            outputs.append(previous)
        if return_pil_images:
            if self.is_video:
                raise ValueError("return_pil_images is for image cascades; a video cascade returns tensors")
            outputs = [to_pil_images(images) for images in outputs]
        return outputs if return_all_unet_outputs else outputs[-1]

    @contextlib.contextmanager
    def _one_unet_on(self, index: int, *, enabled: bool):
        """With ``enabled`` on an accelerator: only unet ``index`` on the cascade's device while it
        samples, the others on the CPU, every unet back where it was afterwards (the reference's
        ``one_unet_in_gpu``)."""
        device = self.device
        if not enabled or device.type == "cpu":
            yield
            return
        homes = [next(unet.parameters()).device for unet in self.unets]
        for i, unet in enumerate(self.unets):
            unet.to(device if i == index else "cpu")
        try:
            yield
        finally:
            for unet, home in zip(self.unets, homes):
                unet.to(home)

    def _compiled_unet(self, index: int, options: dict) -> Callable:
        """``torch.compile(unet, **options)`` of stage ``index``, made once and kept (not a submodule,
        so state dicts are unchanged)."""
        key = (index, repr(sorted(options.items())))
        compiled = self.__dict__.setdefault("_compiled_unets", {})
        if key not in compiled:
            compiled[key] = torch.compile(self.unets[index], **options)
        return compiled[key]

    def _stage_cond(self, index, batch, text_embeds, text_masks, **pixels) -> dict:
        """Unet ``index``'s conditioning keywords for every sampling step. The text part is computed
        here once (``text_conditioning``) where the unet can (ours), not at every step."""
        cond = {}
        if self.condition_on_text:
            unet = self.unets[index]
            if hasattr(unet, "text_conditioning"):
                cond.update(text_conditioning=unet.text_conditioning(text_embeds, text_masks))
            else:
                cond.update(text_embeds=text_embeds, text_mask=text_masks,
                            cond_drop_mask=torch.zeros(batch, dtype=torch.bool, device=self.device))
        cond.update(self._pixel_conditions(index, batch, **pixels))
        return cond

    def _null_cond(self, index: int, cond: dict) -> dict:
        """The keywords that turn ``cond`` into its null version (classifier-free guidance's null half)."""
        text = cond.get("text_conditioning")
        if text is not None:
            return {"text_conditioning": self.unets[index].null_text_conditioning(text)}
        return {"cond_drop_mask": True}

    def _x0_model(self, plan: StagePlan, cond: dict, guidance: dict) -> Callable:
        """Stage ``plan``'s x0 estimate: guidance on the network output (one batched forward),
        conversion to x0, thresholding, self-conditioning."""
        index = plan.unet_number - 1
        unet, stage = self.unets[index], self.stages[index]
        guidance = dict(guidance)
        autocast_dtype = guidance.pop("autocast_dtype", None)
        compile_options = guidance.pop("compile_options", None)
        net = unet if compile_options is None else self._compiled_unet(index, compile_options)
        net = net if autocast_dtype is None else Autocast(net, autocast_dtype, self.device.type)
        if plan.cond_scale != 1:
            net = classifier_free_guidance(net, plan.cond_scale, self._null_cond(index, cond), **guidance)
        x0_model = stage.x0_model(net, plan.sampler, plan.schedule)
        if plan.dynamic_threshold:
            x0_model = dynamic_thresholding(x0_model, self._config.dynamic_thresholding_percentile)
        else:
            x0_model = static_clipping(x0_model)
        return SelfConditioned(x0_model) if unet.self_cond else x0_model

    def _sample_stage(self, plan: StagePlan, *, batch, previous, cond, guidance, inpaint, generators, callback,
                      progress) -> torch.Tensor:
        """Runs one stage; returns its output in the caller's range ([0, 1] with auto_normalize_img)."""
        index = plan.unet_number - 1
        unet, stage = self.unets[index], self.stages[index]
        if unet.is_null:
            raise ValueError(
                f"unet {index + 1} is a NullUnet placeholder and cannot sample; start_at_unet_number="
                f"{index + 2} with start_image_or_video gives the low-res input instead"
            )
        size, frames = plan.image_size, plan.frames
        shape = (batch, self.channels, *(() if frames is None else (frames,)), size, size)
        if index > 0:  # the previous stage's output, resized and noised to the sampling noise level
            lowres = self._to_model_range(self._resize(previous, index, frames))
            times = torch.full((batch,), plan.lowres_noise_level, device=self.device)
            lowres, log_snr = self._lowres_augmentation(lowres, times, generators)
            condition = stage.lowres_sampling_condition(times, log_snr)
            cond = dict(cond, lowres_cond_img=lowres, lowres_noise_times=condition)
        init = None
        if plan.init_images is not None:
            init = self._resize(self._to_model_range(_as_float_images(plan.init_images)), index, frames)
        elif plan.refine:
            init = self._to_model_range(self._resize(previous, index, frames))
        known, masks, resample_times = inpaint
        region = None
        if known is not None:
            region = Inpainting(known=self._resize(self._to_model_range(known), index, frames),
                                mask=resize_mask(masks, size, frames, self._setting("resize_mode", 0)),
                                resample_times=resample_times)
        x = stage.sample(self._x0_model(plan, cond, guidance), shape, sampler=plan.sampler,
                         options=plan.sampler_options, levels=plan.levels, skip=plan.skip_steps, init=init,
                         inpaint=region, cond=cond, generator=generators, callback=callback, progress=progress,
                         schedule=plan.schedule, refine=plan.refine)
        x = x.clamp(-1.0, 1.0)
        if region is not None:  # the known region exactly, as the reference pastes it at the end
            x = torch.where(_broadcastable(region.mask, x), region.known, x)
        return self._to_output_range(x)


_SAMPLE_ONLY_KEYWORDS = {
    "texts", "text_masks", "text_embeds", "cond_images", "cond_video_frames", "post_cond_video_frames",
    "inpaint_videos", "inpaint_images", "inpaint_masks", "inpaint_resample_times", "batch_size",
    "cfg_remove_parallel_component", "cfg_keep_parallel_frac", "return_all_unet_outputs",
    "return_pil_images", "use_tqdm", "use_one_unet_in_gpu", "generator", "callback", "dtype", "compile",
}
_WARNED: set[str] = set()


_INTERNAL_DIRS = tuple(f"{Path(module).parent}{os.sep}" for module in (__file__, torch.__file__))


def _warn_once(message: str) -> None:
    """A UserWarning, once per message, attributed to the user's line that called into the cascade
    (not to this package, nor to torch's ``no_grad`` wrapper)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    frame, stacklevel = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


def compile_options_of(compile) -> dict | None:
    """None (eager), or the ``torch.compile`` keywords of a ``compile=`` option (``sample``,
    ``ImagenTrainer``): ``True`` is ``{}``, a dict its keywords."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict) and all(isinstance(key, str) for key in compile):
        return dict(compile)
    raise TypeError(f"compile must be a bool or a dict of torch.compile keywords (e.g. {{'backend': 'inductor'}}), "
                    f"got {compile!r}")


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels are divided by 255 (as the reference); other tensors are taken as they are."""
    images = torch.as_tensor(images)
    return images / 255 if images.dtype == torch.uint8 else images


def _broadcastable(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B, H, W) or (B, F, H, W) mask shaped to broadcast against x (B, C, [F,] H, W)."""
    return mask[:, None] if mask.ndim == x.ndim - 1 else mask[:, None, None]


def check_inpaint_masks(masks: torch.Tensor | None, known: torch.Tensor) -> torch.Tensor:
    spatial = (known.shape[0], *known.shape[-2:])
    accepted = [spatial] + ([(known.shape[0], known.shape[2], *known.shape[-2:])] if known.ndim == 5 else [])
    if masks is None or tuple(masks.shape) not in accepted:
        got = None if masks is None else tuple(masks.shape)
        raise ValueError(f"inpaint_masks must have shape {' or '.join(map(str, accepted))}, got {got}")
    return masks.bool()


def resize_mask(masks: torch.Tensor, size: int, frames: int | None, mode: str = "nearest") -> torch.Tensor:
    """Masks (B, H, W) or (B, F, H, W) resized like images; any nonzero value keeps (the reference's
    ``.bool()`` of the resized float mask)."""
    resized = resize(masks.float().unsqueeze(1), size, frames=frames if masks.ndim == 4 else None, mode=mode)
    return resized.squeeze(1) != 0


__all__ = [
    "SCHEDULE_NAMES", "CascadeSampling", "SelfConditioned", "StagePlan", "check_inpaint_masks", "compile_options_of",
    "resize_mask",
    "resolve_schedule",
]
