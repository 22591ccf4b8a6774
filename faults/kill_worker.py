"""Trains a tiny cascade with a checkpoint every step until killed, for ``faults_lib.kill_loop``.

    python kill_worker.py FOLDER KEEP

A zygote: it imports everything once, then for each line ``trial <seed>`` read on stdin forks a
child that builds a trainer on FOLDER (resuming from its newest checkpoint) and trains forever, and
waits for it. The child prints ``ready <pid> <steps resumed from>``, then ``step <n>`` after each
step and ``save-begin`` / ``save-end`` around each checkpoint write; the zygote prints
``reaped <pid>`` once the child is dead (the caller SIGKILLs it). The write is slowed down (its
bytes go out in pieces with short sleeps; fsync and rename wait a little) so that kills aimed at
a save land inside it. Forking keeps a trial at a fraction of a second instead of an interpreter
start.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from faults_lib import tiny_imagen

import imagen.cascade.container as container
from imagen.trainer import ImagenTrainer


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def slow_write_patches(rng: random.Random) -> None:
    """Writes a container's bytes in pieces with sleeps between, and waits around fsync and rename."""
    real_atomic_write, real_replace, real_fsync = container.atomic_write, os.replace, os.fsync

    class SlowFile:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            view = memoryview(data)
            step = max(1, len(view) // 4)
            for i in range(0, len(view), step):
                self.handle.write(view[i : i + step])
                time.sleep(rng.uniform(0, 0.004))
            return len(view)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    def slow_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return SlowFile(handle) if "w" in mode or "x" in mode else handle

    def atomic_write(path, write):
        say("save-begin")
        result = real_atomic_write(path, write)
        say("save-end")
        return result

    def replace(a, b):
        time.sleep(rng.uniform(0, 0.003))
        real_replace(a, b)

    def fsync(fd):
        time.sleep(rng.uniform(0, 0.003))
        real_fsync(fd)

    container.open = slow_open  # module global: shadows the builtin inside the container module only
    container.atomic_write = atomic_write
    os.replace, os.fsync = replace, fsync


def child(folder: Path, keep: int, seed: int) -> None:
    rng = random.Random(seed)
    slow_write_patches(rng)
    trainer = ImagenTrainer(tiny_imagen(), verbose=False, checkpoint_path=folder, checkpoint_every=1,
                            max_checkpoints_keep=keep, warmup_steps=1)
    say(f"ready {os.getpid()} {trainer.num_steps_taken()}")
    g = torch.Generator().manual_seed(seed)
    while True:
        trainer(torch.rand(2, 3, 8, 8, generator=g), unet_number=1)
        trainer.update(1)
        say(f"step {trainer.num_steps_taken()}")


def main() -> None:
    folder, keep = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    warm = ImagenTrainer(tiny_imagen(), verbose=False, warmup_steps=1)  # first-use costs paid once, before forks
    warm(torch.rand(2, 3, 8, 8), unet_number=1)
    warm.update(1)
    del warm
    say("zygote")
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "trial":
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                child(folder, keep, int(words[1]))
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
        say(f"reaped {pid}")


if __name__ == "__main__":
    main()
