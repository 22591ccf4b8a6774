"""``imagen sample``: images (or videos) for prompts from a checkpoint, one cascade plan per batch."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError
from .outputs import make_folder, prompt_filename, refuse_overwrite, write_images, write_videos
from .prompts import read_prompts_file
from .sample_inputs import checked_device, image_file, inpainting, resolve_model_path

DEFAULT_COND_SCALE = 5.0
"""``imagen sample``'s guidance scale when none is given (the reference CLI's ``--cond_scale`` default)."""


def per_stage(values: list | None, num_unets: int, option: str):
    if values is None:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != num_unets:
        raise CliError(
            f"{option} gives {len(values)} values, but the cascade has {num_unets} stages (give 1 or {num_unets})"
        )
    return tuple(values)


def cmd_sample(args) -> int:
    import torch

    from imagen.cascade import load_imagen_from_checkpoint

    prompts = list(args.prompts)
    if args.prompts_file is not None:  # read first: a bad file fails before the model is loaded
        prompts += read_prompts_file(args.prompts_file, "--prompts-file")
    path = resolve_model_path(args.model)
    use_ema = not args.no_ema and args.load_ema is not False
    cascade = load_imagen_from_checkpoint(path, load_ema_if_available=use_ema, device=checked_device(args.device))
    cascade.eval()
    steps = per_stage(args.steps, cascade.num_unets, "--steps")
    sampler = per_stage(args.sampler, cascade.num_unets, "--sampler")
    guided = cascade.condition_on_text and cascade.cond_drop_prob > 0
    scales = args.cond_scale if args.cond_scale is not None else [DEFAULT_COND_SCALE if guided else 1.0]
    if any(scale != 1 for scale in scales) and not guided:
        raise CliError(f"--cond-scale {args.cond_scale}: this cascade was not trained for classifier-free guidance "
                       "(it needs condition_on_text and cond_drop_prob > 0); use --cond-scale 1")
    scales = per_stage(scales, cascade.num_unets, "--cond-scale")
    scales = scales if isinstance(scales, tuple) else (scales,) * cascade.num_unets
    skips = per_stage(args.skip_steps or [0], cascade.num_unets, "--skip-steps")
    skips = skips if isinstance(skips, tuple) else (skips,) * cascade.num_unets
    init = image_file("--init-image", args.init_image) if args.init_image is not None else None
    if skips[0] != 0 and init is None:
        raise CliError(f"--skip-steps {args.skip_steps}: the first stage has no image to start from; "
                       "its value must be 0 (or give --init-image)")
    if init is not None and skips[0] == 0:
        raise CliError("--init-image needs --skip-steps N,... with N > 0: the first stage refines the image from "
                       "its step N (the more steps skipped, the more of the image is kept)")
    inpaint = inpainting(args)
    plans = cascade.sampling_plan(steps=steps, sampler=sampler,
                                  video_frames=args.video_frames if cascade.is_video else None)
    for plan, skip in zip(plans, skips):
        if skip >= plan.steps:
            raise CliError(f"--skip-steps {args.skip_steps}: stage {plan.unet_number} samples {plan.steps} steps; "
                           "skip fewer")
    refine = tuple(skip or None for skip in skips)  # a stage with N > 0 refines the one before from step N
    if cascade.condition_on_text:
        if not prompts:
            raise CliError("this cascade conditions on text: give at least one prompt")
        for prompt in prompts:
            if not prompt.strip():
                raise CliError("prompts must not be empty")
        count = len(prompts)
    else:
        if prompts:
            raise CliError("this cascade does not condition on text: give no prompts (use --num-images)")
        count = args.num_images
    taken: set[str] = set()
    names = prompts or [f"sample_{i}" for i in range(count)]
    stems = [prompt_filename(p, taken) for p in names]
    output_dir = Path(args.output_dir)
    make_folder(output_dir, "--output-dir")
    targets = [output_dir / f"{stem}.gif" for stem in stems] + [output_dir / stem for stem in stems] \
        if cascade.is_video else [output_dir / f"{stem}.png" for stem in stems]
    refuse_overwrite(targets, args.overwrite)
    written = []
    for start in range(0, count, args.batch_size):
        stop = min(count, start + args.batch_size)
        generators = [torch.Generator(device=cascade.device).manual_seed(args.seed + i) for i in range(start, stop)]
        options = dict(steps=steps, sampler=sampler, use_tqdm=not args.quiet, batch_size=stop - start)
        if cascade.condition_on_text:
            options["texts"] = prompts[start:stop]
        if cascade.is_video:
            options["video_frames"] = args.video_frames
        if init is not None:
            options["init_images"] = (init.expand(stop - start, -1, -1, -1),) + (None,) * (cascade.num_unets - 1)
        if inpaint is not None:
            options["inpaint_images"] = inpaint[0].expand(stop - start, -1, -1, -1)
            options["inpaint_masks"] = inpaint[1].expand(stop - start, -1, -1)
        outputs = cascade.sample(cond_scale=scales, generator=generators, refine_from_step=refine,
                                 **options).float().cpu()
        write = write_videos if cascade.is_video else write_images
        written += write(outputs, stems[start:stop], output_dir)
    for path in written:
        print(path)
    return 0
