"""``imagen demo``: runs ``demo.run_demo`` and prints its summary."""

from __future__ import annotations


def cmd_demo(args) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(
        output_dir=args.output_dir, minutes=args.minutes if args.steps is None else None, steps=args.steps,
        seed=args.seed, progress=not args.quiet, threads=args.threads,
    )
    if args.steps is None and args.minutes is None:
        settings = DemoSettings(output_dir=args.output_dir, seed=args.seed, progress=not args.quiet,
                                threads=args.threads)
    summary = run_demo(settings)
    base, sr = summary["scores"]["base"], summary["scores"]["sr"]
    print(f"trained {summary['steps'][0]} base steps and {summary['steps'][1]} super-resolution steps "
          f"in {summary['train_seconds'] / 60:.1f} min; sampled {summary['samples']} images in "
          f"{summary['sample_seconds']:.1f} s")
    print(f"held-out prompts, 32 px samples: colour {sr['colour']:.0%}, position {sr['position']:.0%} "
          f"(16 px base: colour {base['colour']:.0%}, position {base['position']:.0%}; chance 17% and 20%)")
    print(f"samples: {summary['grid']}")
    print(f"checkpoint: {summary['checkpoint']} (try: imagen sample --model {summary['checkpoint']} "
          "--cond-scale 4,1 --skip-steps 0,4 --steps 16,8 "
          f"\"a red circle in the top left\")")
    print(f"total time {summary['total_seconds'] / 60:.1f} min")
    return 0
