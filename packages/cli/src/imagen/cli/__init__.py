"""imagen.cli: ``cascade-cli`` (alias ``imagen``), the command line of the imagen cascades.

    imagen config --path config.json          # a default config (cascade, trainer, dataset) as JSON
    imagen config --preset small-fast         # the small-fast recipe (imagen.cascade.small_fast) instead
    imagen train --config config.json --unet 1 --epochs 10
    imagen sample --model checkpoints "a red circle in the top left"
    imagen demo                               # train on built-in shapes data, about 10 min on 2 CPU cores

From Python: ``main(["sample", "--model", ...])`` returns the exit status.
"""

from .config import CliConfig, DatasetConfig, TrainerConfig, default_config, preset_config
from .demo import DemoSettings, ThreadTuner, demo_cascade_config, demo_recipe, run_demo
from .errors import CliError
from .main import main
from .outputs import prompt_filename
from .parser import build_parser

__all__ = [
    "CliConfig",
    "CliError",
    "DatasetConfig",
    "DemoSettings",
    "ThreadTuner",
    "TrainerConfig",
    "build_parser",
    "default_config",
    "demo_cascade_config",
    "demo_recipe",
    "main",
    "preset_config",
    "prompt_filename",
    "run_demo",
]
