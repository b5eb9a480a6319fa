"""A torchrun worker for tests/test_train_ddp.py: runs ``rad-train`` (cli.main) once per job of a JSON file, so one
torchrun launch trains several runs (each joins and leaves the process group as rad-train does).

job: {"argv": [rad-train arguments], "die_at": step or null}. ``die_at``: rank 1 kills itself (SIGKILL, no chance
to clean up) right after that step on torchrun's first attempt, so the launch's --max-restarts takes over.
"""

import json
import os
import signal
import sys

import torch

from comfyui_rad.train import loop
from comfyui_rad.train.cli import main


def die_after(step: int) -> None:
    step_once = loop.Trainer.train_step

    def train_step(self):
        out = step_once(self)
        if self.step == step and self.dist.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    loop.Trainer.train_step = train_step


if __name__ == "__main__":
    torch.set_num_threads(1)
    jobs = json.loads(open(sys.argv[1]).read())
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    for job in jobs:
        if job.get("die_at") and first_attempt:
            die_after(job["die_at"])
        code = main(job["argv"])
        if code:
            sys.exit(code)
