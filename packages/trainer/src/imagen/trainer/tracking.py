"""Experiment tracking and console output of the trainer, through accelerate.

- :func:`check_trackers` refuses, before anything trains, a tracker that is unknown or not installed
  (accelerate itself would drop it silently).
- :func:`flat_hyperparameters` turns a nested run config into the flat scalar dict that trackers
  take as hyper-parameters.
- :class:`TrainingLog` collects each stage's loss, gradient norm, images and step time on this
  process and, every ``log_every`` steps, averages them over processes with one
  ``accelerator.reduce`` and logs them with the learning rate and the non-finite step count.
- :func:`log_image` sends one picture to every tracker that takes images.
- :class:`Progress` is a tqdm bar with a total (steps, or a time budget in seconds) on the main
  process only; :func:`quiet_other_processes` keeps the other processes' info logs off the console.

Tags, for stage n at its own step count: ``train/loss/unet<n>``, ``train/lr/unet<n>``,
``train/grad_norm/unet<n>``, ``train/images_per_second/unet<n>``, ``train/nonfinite_steps/unet<n>``,
``valid/loss/unet<n>`` and the image ``samples/unet<n>``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import torch

__all__ = [
    "Progress",
    "TrainingLog",
    "check_trackers",
    "flat_hyperparameters",
    "log_image",
    "quiet_other_processes",
]

logger = logging.getLogger(__name__)

_PACKAGES = {"comet_ml": "comet-ml", "dvclive": "dvclive", "mlflow": "mlflow", "tensorboard": "tensorboard",
             "wandb": "wandb", "aim": "aim", "clearml": "clearml", "swanlab": "swanlab", "trackio": "trackio"}


def check_trackers(log_with, project_dir) -> list:
    """``log_with`` as a list (a name, a list of names or accelerate ``GeneralTracker`` objects, or
    ``"all"``); raises ``ValueError`` naming a tracker that accelerate does not know or that is not
    installed, and one that writes files (TensorBoard, Aim) without ``project_dir``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers

    items = list(log_with) if isinstance(log_with, (list, tuple)) else [log_with]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for item in items:
        if isinstance(item, GeneralTracker):
            continue
        name = str(getattr(item, "value", item))
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"log_with: unknown tracker {name!r}; accelerate knows {sorted(LOGGER_TYPE_TO_CLASS)}")
        if name not in available:
            raise ValueError(
                f"log_with: tracker {name!r} is not installed (pip install {_PACKAGES.get(name, name)}); "
                f"installed trackers: {sorted(available) or 'none'}"
            )
        if LOGGER_TYPE_TO_CLASS[name].requires_logging_directory and project_dir is None:
            raise ValueError(f"log_with={name!r} writes its logs into a folder: give project_dir")
    return items


def flat_hyperparameters(config: Mapping, prefix: str = "") -> dict:
    """A nested config (dicts, lists, scalars) as one flat dict ``{"a.b.0": value}`` of bool, int,
    float and str values (None becomes ``"None"``; other objects their ``str``), as trackers want."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hyperparameters(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, (bool, int, float, str)) for v in value):
                flat[name] = json.dumps(list(value))
            else:
                flat.update(flat_hyperparameters(dict(enumerate(value)), f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class _Window:
    """One stage's sums since its last log (host floats, and the gradient norm on the device)."""

    def __init__(self):
        self.loss, self.steps, self.images, self.seconds, self.norm_steps = 0.0, 0, 0, 0.0, 0
        self.grad_norm = None


class TrainingLog:
    """Per-stage training metrics, logged every ``log_every`` steps of that stage.

    :meth:`record` costs no host sync (the gradient norm is summed on the device); :meth:`log_due`
    is called by every process at the same steps (the reduction is a collective) and only the main
    process's trackers write. ``enabled`` is False without trackers: nothing is reduced or logged.
    With ``owns_trackers`` :meth:`start` opens accelerate's trackers (run ``project``) with the run
    config and :meth:`finish` closes them; a log after ``finish`` opens them again.
    """

    def __init__(self, accelerator, log_every: int, enabled: bool, owns_trackers: bool = True,
                 project: str = "imagen"):
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be an int >= 1 (steps between tracker logs), got {log_every!r}")
        self.accelerator, self.log_every, self.enabled = accelerator, log_every, enabled
        self.owns_trackers, self.project = owns_trackers, project
        self.config: dict = {}
        self.open = not owns_trackers
        self.windows: dict[int, _Window] = {}
        self.last_logged: dict[int, int] = {}
        self.last: dict[str, float] = {}
        """The values of the latest log (for progress bars and tests)."""

    def start(self, config: Mapping) -> None:
        """Opens the trackers (main process) with ``config`` flattened as hyper-parameters."""
        self.config = flat_hyperparameters(config)
        if self.enabled and self.owns_trackers:
            self.accelerator.init_trackers(self.project, config=self.config)
            self.open = True

    def ensure_open(self) -> None:
        """Opens the trackers again after :meth:`finish` (same run config)."""
        if self.enabled and not self.open:
            self.start(self.config)

    def finish(self) -> None:
        """Flushes and closes every tracker of the main process (only trackers this log opened: those of
        an accelerator the user passed are the user's to end)."""
        if not (self.enabled and self.open and self.owns_trackers):
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()
        self.open = False

    def log(self, values: dict, step: int) -> None:
        """``accelerator.log(values, step)`` (the main process's trackers)."""
        if self.enabled:
            self.ensure_open()
            self.accelerator.log(values, step=step)

    def record(self, stage, loss: float, images: int, seconds: float, taken: bool) -> None:
        """Adds one train step of ``stage`` (this process's loss, batch size and step time)."""
        if not self.enabled:
            return
        window = self.windows.setdefault(stage.unet_number, _Window())
        window.loss += loss
        window.steps += 1
        window.images += images
        window.seconds += seconds
        norm = getattr(stage, "last_grad_norm", None)
        if taken and norm is not None:
            norm = norm.detach().float()
            window.grad_norm = norm if window.grad_norm is None else window.grad_norm + norm
            window.norm_steps += 1

    def log_due(self, stage) -> dict | None:
        """Logs ``stage``'s window when its step count is a multiple of ``log_every`` (once per step
        count); returns the logged values, or None."""
        steps, number = stage.steps, stage.unet_number
        window = self.windows.get(number)
        if not self.enabled or window is None or steps % self.log_every or self.last_logged.get(number) == steps:
            return None
        norm = window.grad_norm if window.grad_norm is not None else torch.zeros((), device=self.accelerator.device)
        host = torch.tensor([window.loss, window.steps, window.images, window.norm_steps], dtype=torch.float64)
        sums = torch.cat([host.to(norm.device), norm.double().reshape(1)]).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        loss, count, images, _, norm_sum = sums.tolist()
        world = self.accelerator.num_processes
        values = {
            f"train/loss/unet{number}": loss / count,
            f"train/lr/unet{number}": float(stage.optimizer.param_groups[0]["lr"]),
            f"train/images_per_second/unet{number}": images / window.seconds if window.seconds > 0 else 0.0,
            f"train/nonfinite_steps/unet{number}": stage.nonfinite_steps,
        }
        if window.norm_steps:
            values[f"train/grad_norm/unet{number}"] = norm_sum / world / window.norm_steps  # same on every rank
        self.log(values, step=steps)
        self.windows[number] = _Window()
        self.last_logged[number] = steps
        self.last = values
        return values

    def mean_over_processes(self, value: float) -> float:
        """``value`` averaged over processes (a collective: every process calls it)."""
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="mean").item())


def log_image(accelerator, tag: str, picture, step: int) -> None:
    """Sends a PIL picture to every tracker of the main process that takes images (TensorBoard as
    one NHWC image, others through their ``log_images``)."""
    import numpy as np

    array = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: array[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({tag: [array]}, step=step)
        except NotImplementedError:
            logger.debug("tracker %s does not take images", tracker.name)


class Progress:
    """A tqdm bar on the main process only, whose total is ``steps`` (steps done) or ``seconds``
    (a time budget: the bar counts elapsed seconds, so tqdm's ETA is the budget's end).

    ``advance()`` after each step; ``done`` says whether the budget is spent.
    """

    def __init__(self, *, steps: int | None = None, seconds: float | None = None, desc: str = "", show: bool = True):
        from tqdm.auto import tqdm

        if (steps is None) == (seconds is None):
            raise ValueError("give exactly one of steps and seconds (the training budget)")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
            raise ValueError(f"seconds must be a number > 0 (a time budget), got {seconds!r}")
        self.steps, self.seconds, self.count = steps, seconds, 0
        self.started = time.monotonic()
        unit = "step" if steps is not None else "s"
        total = steps if steps is not None else float(seconds)
        fmt = None if steps is not None else "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not show, bar_format=fmt)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> bool:
        """Whether the step count or the time budget is reached."""
        return self.count >= self.steps if self.steps is not None else self.elapsed >= self.seconds

    def advance(self, **postfix) -> None:
        """One more step done; ``postfix`` values are shown beside the bar."""
        self.count += 1
        if self.steps is not None:
            self.bar.update(1)
        else:
            self.bar.update(min(self.elapsed, self.seconds) - self.bar.n)
            postfix = {"steps": self.count, **postfix}  # the bar counts seconds: show the steps beside it
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


def quiet_other_processes(accelerator) -> None:
    """On processes other than the main one, raises the ``imagen`` loggers' level to ERROR (the main
    process reports for all: every rank takes the same steps)."""
    if not accelerator.is_main_process:
        logging.getLogger("imagen").setLevel(logging.ERROR)
