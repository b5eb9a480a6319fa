"""Hostile files and a shared server (issue 20): odd mask values, outputs on inputs, run-folder locks and full
disks, model files replaced on disk, crafted model files that ask for gigabytes.

One test (or one parametrised table) per class; the CLIs run in-process through main(argv) and must give one line,
exit status 2 and no traceback.
"""

import dataclasses
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm
from PIL import Image

from comfyui_rad import evaluate, masks
from comfyui_rad.checkpoints import save_model
from comfyui_rad.checks import check_mask_values, check_not_inputs, is_within
from comfyui_rad.cli import main as inpaint_main
from comfyui_rad.convert import main as convert_main
from comfyui_rad.fileio import DiskFullError, atomic_write
from comfyui_rad.pipeline import inpaint
from comfyui_rad.schedule import SpatialSchedule
from comfyui_rad.train import cli as train_cli
from comfyui_rad.train.lock import LOCK_NAME, RunLock, RunLocked
from comfyui_rad.train.state import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dataclasses.replace(TINY, image_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_files")
    save_model(d / "tiny.safetensors", make_adm(SMALL))
    rng = np.random.RandomState(0)
    (d / "data").mkdir()
    for i in range(5):
        Image.fromarray((rng.rand(20, 20 + i, 3) * 255).astype(np.uint8)).save(d / "data" / f"img{i}.png")
    (d / "authors").mkdir()  # an input folder (the authors' checkpoint-N): its contents are never written
    (d / "authors" / "note.txt").write_text("read only")
    return d


def one_line_error(capsys, prog: str, *needles: str) -> str:
    """The CLI's stderr: exactly one line, "prog: error: ...", holding every needle, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- 5. odd masks


def noisy_255_mask() -> torch.Tensor:
    """A 0..255 mask with a little noise in the black part: 20 % white (it read as "inpaint 80 %")."""
    mask = torch.randint(0, 4, (16, 16), generator=torch.Generator().manual_seed(0)).float()
    mask[4:11, 4:11] = 255
    return mask


@pytest.mark.parametrize("mode", masks.MASK_MODES)
def test_masks_nan_0_255_and_empty_refused_in_every_mode(mode):
    one_nan = torch.zeros(8, 8)
    one_nan[2, 3] = float("nan")
    cases = [
        (one_nan, "mask has 1 NaN or infinite value"),  # binary mode read it as "keep"
        (torch.full((8, 8), float("nan")), "mask has 64 NaN"),  # not "empty"
        (noisy_255_mask(), r"mask values must be in \[0, 1\].*0\.\.255: divide it by 255"),
        (torch.zeros(0, 8, 8), r"mask is empty \(shape \(0, 8, 8\)\)"),
        (torch.empty(0), "mask is empty"),
    ]
    for mask, message in cases:
        with pytest.raises(ValueError, match=message):
            masks.prepare(mask, mode)
    with pytest.raises(ValueError, match="my_mask has 1 NaN"):  # the caller's name for it
        masks.prepare(one_nan, mode, name="my_mask")
    assert torch.equal(masks.prepare(torch.tensor([[0.0, 1.0005]]), mode), torch.tensor([[0.0, 1.0]]))  # rounding


def test_schedule_and_pipeline_masks_empty_or_0_255_are_clear(tiny_adm):
    for mask in (torch.zeros(0, 8, 8), torch.zeros(2, 0, 8)):
        with pytest.raises(ValueError, match="mask is empty"):  # was torch's RuntimeError from min()
            SpatialSchedule(mask)
    with pytest.raises(ValueError, match=r"got range \[0, 255\]: divide it by 255"):
        SpatialSchedule(noisy_255_mask())
    with pytest.raises(ValueError, match="mask has 256 NaN"):
        inpaint(tiny_adm, torch.rand(1, 3, 16, 16), torch.full((16, 16), float("nan")), steps=2)
    with pytest.raises(ValueError, match="divide it by 255"):
        inpaint(tiny_adm, torch.rand(1, 3, 16, 16), noisy_255_mask(), steps=2)
    assert check_mask_values(torch.ones(3)) is not None


# ------------------------------------------------------------------------------------ 3. outputs never on inputs


def test_one_rule_output_is_not_and_is_not_inside_an_input(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"a")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert is_within(tmp_path / "in" / "x" / "y.png", tmp_path / "in")
    assert is_within(tmp_path / "link" / "y.png", tmp_path / "in")  # through a symlink
    assert not is_within(tmp_path / "input.png", tmp_path / "in")  # a name prefix is not a folder
    for out in (tmp_path / "in", tmp_path / "in" / "sub" / "r.json", tmp_path / "link" / "a.png",
                tmp_path / "out" / ".." / "in" / "b.png"):
        with pytest.raises(ValueError, match="inside the --images folder"):
            check_not_inputs([("--out", out)], [("--images", tmp_path / "in")])
    with pytest.raises(ValueError, match="is the --image file"):
        check_not_inputs([("-o", tmp_path / "link" / "a.png")], [("--image", tmp_path / "in" / "a.png")])
    check_not_inputs([("--out", tmp_path / "input.png")], [("--images", tmp_path / "in"), ("--x", None)])


def test_every_cli_refuses_outputs_on_or_in_inputs_even_with_force(files, tmp_path, capsys):
    model, data = files / "tiny.safetensors", files / "data"
    (tmp_path / "checkpoints").mkdir()  # a run folder: --export-from reads its checkpoints/
    before = snapshot(files)
    evaluate_args = ["--model", str(model), "--images", str(data), "-q", "--force"]
    train_args = ["--data", str(data), "--preset", "tiny", "--resolution", "16", "-q", "--force"]
    cases = [
        (convert_main, "rad-convert", [str(model), "-o", str(model), "--force", "-q"], "is the source file"),
        (convert_main, "rad-convert", [str(files / "authors"), "-o", str(files / "authors" / "m.safetensors"),
                                       "--force", "-q"], "inside the source folder"),
        (evaluate.main, "rad-eval", [*evaluate_args, "--out", str(tmp_path / "r.json"), "--grids", str(data)],
         "--grids"),
        (evaluate.main, "rad-eval", [*evaluate_args, "--out", str(tmp_path / "r.json"), "--grids",
                                     str(data / "grids")], "inside the --images folder"),
        (evaluate.main, "rad-eval", [*evaluate_args, "--out", str(data / "img0.png")], "inside the --images folder"),
        (inpaint_main, "rad-inpaint", ["--model", str(files / "authors"), "--image", str(data / "img0.png"),
                                       "--mask", "box", "-o", str(files / "authors" / "x.png"), "--force", "-q"],
         "inside the --model folder"),
        (inpaint_main, "rad-inpaint", ["--model", str(model), "--image", str(data / "img0.png"), "--mask", "box",
                                       "-o", str(data / "img0.png"), "--force", "-q"], "is the --image file"),
        (train_cli.main, "rad-train", [*train_args, "--out", str(data / "run")], "--out"),
        (train_cli.main, "rad-train", [*train_args, "--out", str(data)], "inside the --data folder"),
        (train_cli.main, "rad-train", [*train_args, "--out", str(tmp_path / "run"), "--export",
                                       str(data / "m.safetensors")], "inside the --data folder"),
        (train_cli.main, "rad-train", ["--export-from", str(tmp_path), "--export",
                                       str(tmp_path / "checkpoints" / "m.safetensors"), "--force", "-q"],
         "inside the --export-from folder"),
    ]
    for main, prog, argv, needle in cases:
        assert main(argv) == 2, argv
        one_line_error(capsys, prog, needle)
    assert snapshot(files) == before  # nothing written, nothing replaced


# ------------------------------------------------------------------------------ 4. run-folder lock and full disks


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_run_folder_lock_live_stale_and_other_host(tmp_path, caplog):
    held = RunLock(tmp_path)
    with pytest.raises(RunLocked, match=f"in use by another rad-train run \\(PID {os.getpid()} on "):
        RunLock(tmp_path)
    held.release()
    RunLock(tmp_path).release()  # free again
    lock = tmp_path / LOCK_NAME
    pid = dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))  # a run killed with -9
    with caplog.at_level(logging.WARNING):
        taken = RunLock(tmp_path)
    assert f"took over the stale lock of PID {pid}" in caplog.text
    assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    taken.release()
    lock.write_text(json.dumps({"pid": 1, "host": "another-host"}))  # its process cannot be checked from here
    with pytest.raises(RunLocked, match="PID 1 on another-host"):
        RunLock(tmp_path)


def fail_writes(monkeypatch, module, name: str, code: int = errno.ENOSPC, after: int = 0) -> None:
    """``module.name`` (a writer) raises OSError(code) from its ``after + 1``-th call on, as a full disk does."""
    real, calls = getattr(module, name), []

    def writer(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)


def test_rad_train_locked_folder_and_full_disk_keep_the_last_checkpoint(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train = ["--data", str(files / "data"), "--preset", "tiny", "--resolution", "16", "--steps", "2",
             "--batch-size", "2", "--holdout", "1", "--preview-every", "0", "--save-every", "1", "--workers", "0",
             "--out", str(out), "-q"]
    out.mkdir()
    held = RunLock(out)
    assert train_cli.main(train) == 2  # a second run on the same --out
    one_line_error(capsys, "rad-train", f"PID {os.getpid()}", "choose another --out")
    held.release()
    fail_writes(monkeypatch, torch, "save", after=1)  # the checkpoint of step 1 is written, step 2's is not
    assert train_cli.main(train) == 2
    line = one_line_error(capsys, "rad-train", "training checkpoint of step 2", "step-0000002.pt", "disk is full")
    assert "Errno" not in line
    monkeypatch.undo()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001.pt"]  # intact, no .tmp left
    assert load_checkpoint(out)["step"] == 1
    assert (out / LOCK_NAME).read_text() == ""  # released: the next run may take the folder
    fail_writes(monkeypatch, torch, "save")
    assert train_cli.main([*train, "--resume", "latest", "--export", str(tmp_path / "m.safetensors")]) == 2
    one_line_error(capsys, "rad-train", "step 2")
    monkeypatch.undo()
    for module in save_file_users():
        fail_writes(monkeypatch, module, "save_file", errno.EFBIG)
    assert train_cli.main([*train, "--resume", "latest", "--export", str(tmp_path / "m.safetensors")]) == 2
    one_line_error(capsys, "rad-train", "weights", "m.safetensors", "too large for this file system")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def save_file_users() -> list:
    """The modules of the package that write safetensors files (each imported save_file by name)."""
    import comfyui_rad.checkpoints  # noqa: F401 - the writers live here or in a module it imports
    return [m for name, m in sorted(sys.modules.items()) if name.startswith("comfyui_rad")
            and getattr(m, "save_file", None) is not None]


def test_full_disk_in_every_other_cli_is_one_line_and_no_file(files, tmp_path, capsys, monkeypatch):
    model, image = files / "tiny.safetensors", files / "data" / "img0.png"
    for module in save_file_users():
        fail_writes(monkeypatch, module, "save_file")
    assert convert_main([str(model), "-o", str(tmp_path / "c.safetensors"), "-q"]) == 2
    one_line_error(capsys, "rad-convert", "could not write the weights", "c.safetensors", "disk is full")
    fail_writes(monkeypatch, Image.Image, "save")
    assert inpaint_main(["--model", str(model), "--image", str(image), "--mask", "box", "--steps", "2", "-o",
                         str(tmp_path / "o.png"), "-q"]) == 2
    one_line_error(capsys, "rad-inpaint", "could not write the image", "o.png", "disk is full")
    fail_writes(monkeypatch, json, "dump", errno.EDQUOT)
    assert evaluate.main(["--model", str(model), "--images", str(files / "data"), "--out", str(tmp_path / "r.json"),
                          "--steps", "2", "--limit", "1", "--masks", "box", "-q"]) == 2
    one_line_error(capsys, "rad-eval", "could not write the results", "r.json", "quota")
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file


def test_torch_and_safetensors_wrapped_disk_errors_are_recognised(tmp_path):
    for err in (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                          "left on device\" })")):
        def write(tmp, err=err):
            tmp.write_bytes(b"partial")
            raise err

        with pytest.raises(DiskFullError, match="could not write the training checkpoint .*x.pt"):
            atomic_write(tmp_path / "x.pt", write)
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass through as they are
        atomic_write(tmp_path / "x.pt", lambda tmp: (_ for _ in ()).throw(ValueError("unrelated")))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ 2. a model file replaced on disk

REPLACE_AND_SAMPLE = """
import sys, torch
from comfyui_rad.checkpoints import load_adm
from comfyui_rad.sampling import sample_ddpm
from comfyui_rad.schedule import SpatialSchedule
torch.set_num_threads(1)
path, other = sys.argv[1], sys.argv[2]
model = load_adm(path)
mask = torch.zeros(1, 1, 32, 32)
mask[..., 8:24, 8:24] = 1
image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
def sample():
    return sample_ddpm(model, image, SpatialSchedule(mask), 3, torch.Generator().manual_seed(1))
before = sample()
with open(path, "r+b") as f:  # cp over it, a download manager writing in place: the same inode, new bytes
    f.truncate(0)
    f.write(open(other, "rb").read())
after = sample()  # the weights used to stay memory-mapped: SIGBUS, the whole process gone
print("same" if torch.equal(before, after) else "different")
"""


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_loaded_model_survives_its_file_rewritten_in_place(tmp_path, suffix):
    path, other = tmp_path / f"model{suffix}", tmp_path / f"other{suffix}"
    larger = dataclasses.replace(SMALL, model_channels=64)  # the new file is shorter: reads past its end
    if suffix == ".safetensors":
        save_model(path, make_adm(larger, seed=0))
        save_model(other, make_adm(SMALL, seed=1))
    else:
        torch.save(make_adm(larger, seed=0).state_dict(), path)
        torch.save(make_adm(SMALL, seed=1).state_dict(), other)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", REPLACE_AND_SAMPLE, str(path), str(other)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode} (-7 = SIGBUS): {done.stderr[-2000:]}"
    assert done.stdout.strip() == "same"
