"""Tuning runs of the demo: ``python bench/cli_demo_tune.py OUTDIR key=value ...``.

``key`` is a DemoSettings field, or ``base.<option>`` / ``sr.<option>`` for a U-Net option of the
demo's cascade config, or ``cascade.<option>`` for a cascade option (values are JSON).
"""

import json
import logging
import sys

from imagen.cli import demo
from imagen.cli.demo import DemoSettings, run_demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    overrides, unet_overrides = {}, {"base": {}, "sr": {}, "cascade": {}}
    for item in sys.argv[2:]:
        key, value = item.split("=", 1)
        part, _, option = key.partition(".")
        if option:
            unet_overrides[part][option] = json.loads(value)
        else:
            overrides[key] = json.loads(value)
    if "sample_steps" in overrides:
        overrides["sample_steps"] = tuple(overrides["sample_steps"])
    original = demo.demo_cascade_config

    def patched(*args, **kwargs):
        config = original(*args, **kwargs)
        config["unets"][0].update(unet_overrides["base"])
        config["unets"][1].update(unet_overrides["sr"])
        config.update(unet_overrides["cascade"])
        return config

    demo.demo_cascade_config = patched
    summary = run_demo(DemoSettings(output_dir=sys.argv[1], **overrides))
    print(json.dumps({"argv": sys.argv[2:], **summary}))


if __name__ == "__main__":
    main()
