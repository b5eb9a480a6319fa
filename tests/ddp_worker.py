"""A torchrun worker for tests/test_train_ddp.py: runs ``rad-train`` (cli.main) once per job of a JSON file, so one
torchrun launch trains several runs (each joins and leaves the process group as rad-train does).

job: {"argv": [rad-train arguments], "die_at": step, "sigterm_at": step, "expect": exit code (default 0)}.
``die_at``: rank 1 kills itself (SIGKILL, no chance to clean up) right after that step on torchrun's first attempt,
so the launch's --max-restarts takes over. ``sigterm_at``: rank 1 gets a SIGTERM while it trains that step.
"""

import json
import os
import signal
import sys

import torch

from comfyui_rad.train import loop
from comfyui_rad.train.cli import main

STEP = loop.Trainer.train_step


def patched(job: dict, first_attempt: bool):
    def train_step(self):
        if self.dist.rank == 1 and self.step + 1 == job.get("sigterm_at"):
            os.kill(os.getpid(), signal.SIGTERM)
        out = STEP(self)
        if self.dist.rank == 1 and self.step == job.get("die_at") and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    return train_step


if __name__ == "__main__":
    torch.set_num_threads(1)
    jobs = json.loads(open(sys.argv[1]).read())
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    for job in jobs:
        loop.Trainer.train_step = patched(job, first_attempt)
        code = main(job["argv"])
        if code != job.get("expect", 0):
            sys.exit(code or 1)
