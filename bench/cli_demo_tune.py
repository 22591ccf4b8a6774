"""Tuning runs of the demo: ``python bench/cli_demo_tune.py OUTDIR key=value ...`` (DemoSettings fields)."""

import json
import logging
import sys

from imagen.cli.demo import DemoSettings, run_demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    overrides = {}
    for item in sys.argv[2:]:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    if "sample_steps" in overrides:
        overrides["sample_steps"] = tuple(overrides["sample_steps"])
    summary = run_demo(DemoSettings(output_dir=sys.argv[1], **overrides))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
