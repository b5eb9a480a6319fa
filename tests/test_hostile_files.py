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
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm, one_line_error
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from comfyui_rad import evaluate, masks
from comfyui_rad.architecture import sampling_bytes
from comfyui_rad.adapters import parse_metadata
from comfyui_rad.checkpoints import load_adm, save_model
from comfyui_rad.checks import check_mask_values, check_not_inputs, is_within
from comfyui_rad.cli import main as inpaint_main
from comfyui_rad.convert import main as convert_main
from comfyui_rad.fileio import MODEL_FORMAT, CheckpointError, DiskFullError, atomic_write
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


# --------------------------------------------------------------- 1. a few bytes must not ask for gigabytes or minutes

GOOD_ARCH = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2], "attention_ds": [2],
             "num_head_channels": 16, "image_size": 32}
STUB = {"time_embed.0.weight": torch.zeros(128, 32), "input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)}


def crafted(path: Path, metadata: dict | None = None, tensors: dict | None = None) -> Path:
    """A few-KB safetensors file: a couple of small tensors and the metadata a stranger chose."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file(dict(tensors or STUB), str(path), metadata={"format": MODEL_FORMAT, **meta})
    assert path.stat().st_size < 64 * 1024
    return path


@pytest.mark.parametrize("change, needle", [
    ({"image_size": 100000}, "architecture field image_size is 100000"),  # asked 112 GiB when sampling
    ({"image_size": 4096, "model_channels": 256, "channel_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2,
      "num_head_channels": 64}, "image_size is 4096: one sampling call at that window needs about"),
    ({"num_res_blocks": 1000000}, "num_res_blocks is 1000000: it must be a whole number in [1, 64]"),
    ({"num_res_blocks": 30, "channel_mult": [1] * 16}, "496 blocks, over the 256 allowed"),
    ({"model_channels": 8192, "channel_mult": [16, 16], "num_head_channels": 64}, "parameters, over the"),
    ({"model_channels": "32"}, "model_channels is '32': it must be a whole number"),  # a number as a string
    ({"num_head_channels": 0}, "num_head_channels is 0"),
    ({"max_period": 0}, "max_period is 0"),  # was "math domain error"
    ({"norm_eps": -1e-5}, "norm_eps is -1e-05"),  # was blamed on the weights
    ({"channel_mult": [1, 0]}, "channel_mult is [1, 0]"),
    ({"channel_mult": 2}, "channel_mult is 2: it must be a list"),
    ({"freq_shift": 16}, "freq_shift is 16: it must be below model_channels / 2 = 16"),  # a zero divisor
    ({"num_heads": 3, "num_head_channels": -1}, "cannot be built: num_heads=3 does not divide"),
    ({"use_scale_shift_norm": "yes"}, "use_scale_shift_norm is 'yes': it must be true or false"),
])
def test_architecture_metadata_is_checked_before_anything_is_built(tmp_path, change, needle):
    path = crafted(tmp_path / "m.safetensors", {"architecture": {**GOOD_ARCH, **change}})
    with pytest.raises(CheckpointError, match=re.escape(needle)) as err:
        load_adm(path)
    assert str(err.value).startswith("m.safetensors: ")  # the file, the field, the value and the limit


@pytest.mark.parametrize("schedule, needle", [
    ({"T1": 10**9}, "T1 must be a positive integer, at most 100,000, got 1000000000"),  # asked 7.5 GiB at load
    ({"T2": "1000"}, "T2 must be a positive integer, at most 100,000, got '1000'"),
    ({"beta_end": "0.02"}, "beta_end must be a finite number in (0, 1), got '0.02'"),
    ({"beta_start": 0.5, "beta_end": 0.1}, "betas must satisfy 0 < start <= end < 1"),
    ([1000], "it must be a JSON object"),
])
def test_schedule_metadata_is_checked(tmp_path, schedule, needle):
    path = crafted(tmp_path / "m.safetensors", {"architecture": GOOD_ARCH, "schedule": schedule})
    with pytest.raises(CheckpointError, match=r"^m\.safetensors: metadata schedule .*" + re.escape(needle)):
        load_adm(path)
    with pytest.raises(CheckpointError, match=r"a\.safetensors: metadata schedule"):  # what read_adapter parses
        parse_metadata({"schedule": json.dumps(schedule)}, "a.safetensors")


@pytest.mark.parametrize("recorded, needle", [
    ({"recommended_start": "telea"}, "metadata recommended_start must be one of noise, harmonic, got 'telea'"),
    ({"recommended_start": "harmonic", "recommended_start_strength": "2"},
     "metadata recommended_start_strength must be a finite number in [0, 1], got 2.0"),
    ({"recommended_start": "harmonic", "recommended_start_strength": "nan"}, "got nan"),
    ({"recommended_start": "harmonic", "recommended_start_strength": "half"},
     "metadata recommended_start_strength must be a number in [0, 1], got 'half'"),
    ({"recommended_start_strength": "0.5"}, "recorded without metadata recommended_start"),
])
def test_recommended_start_metadata_is_checked(tmp_path, recorded, needle):
    path = crafted(tmp_path / "m.safetensors", {"architecture": GOOD_ARCH, **recorded})
    with pytest.raises(CheckpointError, match=r"^m\.safetensors: .*" + re.escape(needle)):
        load_adm(path)
    with pytest.raises(CheckpointError, match=r"^a\.safetensors: .*" + re.escape(needle)):  # an adapter's
        parse_metadata(recorded, "a.safetensors")


def test_key_indices_and_layouts_that_do_not_match_their_tensors(tmp_path):
    tensors = {**STUB, "input_blocks.1000000.0.weight": torch.zeros(1)}  # 4 KB
    save_file(tensors, str(tmp_path / "plain.safetensors"))  # a guided-diffusion state dict: layout inferred
    for path in (tmp_path / "plain.safetensors", crafted(tmp_path / "model.safetensors", tensors=tensors)):
        with pytest.raises(CheckpointError, match="input_blocks keys go up to index 1000000 but hold 2 block"):
            load_adm(path)  # it built a million-block model
    save_model(tmp_path / "tiny.safetensors", make_adm(SMALL))
    with safe_open(str(tmp_path / "tiny.safetensors"), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    arch = json.loads(meta["architecture"])
    save_file(tensors, str(tmp_path / "lies.safetensors"),
              metadata={**meta, "architecture": json.dumps({**arch, "num_res_blocks": 2})})
    with pytest.raises(CheckpointError, match="lies.safetensors does not match the ADM layout"):
        load_adm(tmp_path / "lies.safetensors")


@pytest.mark.parametrize("change, needle", [
    ({"sample_size": 1000000}, "sample_size is 1000000"),  # about 12 TB
    ({"sample_size": [64, "64"]}, "sample_size is [64, '64']"),
    ({"block_out_channels": [32, 0]}, "block_out_channels is [32, 0]"),
    ({"block_out_channels": ["32", "64"]}, "block_out_channels is ['32', '64']"),
    ({"layers_per_block": 1000000}, "layers_per_block is 1000000"),  # spun for minutes
    ({"layers_per_block": "1"}, "layers_per_block is '1'"),
    ({"num_train_timesteps": 0}, "num_train_timesteps is 0"),  # a zero divisor: max_period = pi / T
    ({"norm_eps": -1e-6}, "norm_eps is -1e-06"),
    ({"attention_head_dim": 0}, "attention_head_dim is 0"),
    ({"norm_num_groups": 0}, "norm_num_groups is 0"),
    ({"flip_sin_to_cos": "false"}, "flip_sin_to_cos is 'false': it must be true or false"),
])
def test_diffusers_config_json_numbers_are_checked(tmp_path, change, needle):
    unet = tmp_path / "checkpoint-1" / "unet"
    unet.mkdir(parents=True)
    save_file({"conv_in.weight": torch.zeros(32, 3, 3, 3)}, str(unet / "diffusion_pytorch_model.safetensors"))
    config = {"_class_name": "UNet2DModel", "block_out_channels": [32, 64], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "sample_size": 32, **change}
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=re.escape(f"config.json: {needle}")):
        load_adm(tmp_path / "checkpoint-1")


def test_crafted_files_are_one_line_in_the_cli_and_the_loader_node(files, tmp_path, capsys):
    path = crafted(tmp_path / "big.safetensors", {"architecture": {**GOOD_ARCH, "image_size": 100000}})
    image = files / "data" / "img0.png"
    assert inpaint_main(["--model", str(path), "--image", str(image), "--mask", "box", "-o",
                         str(tmp_path / "o.png"), "-q"]) == 2
    one_line_error(capsys, "rad-inpaint", "big.safetensors", "image_size is 100000")
    state = tmp_path / "run" / "checkpoints" / "step-0000001.pt"
    state.parent.mkdir(parents=True)
    torch.save({"format": "comfyui-rad.train-checkpoint", "version": 2, "run": {}, "trainable": {}, "ema": {}}, state)
    assert train_cli.main(["--export-from", str(state), "--export", str(tmp_path / "e.safetensors"), "-q"]) == 2
    one_line_error(capsys, "rad-train", "step-0000001.pt", "'step' is missing")  # was a KeyError


def test_a_batch_too_large_for_memory_is_refused_before_sampling(tiny_adm, monkeypatch):
    import comfyui_rad.pipeline as pipeline

    monkeypatch.setattr(pipeline, "RADDenoiser", None)  # nothing may run: calling it would be a TypeError
    per_window = sampling_bytes(tiny_adm.config)
    monkeypatch.setattr("comfyui_rad.checks.memory_limit", lambda: 10 * per_window)
    with pytest.raises(ValueError, match=r"inpainting a batch of 16 at the model's 256x256 window would need about "
                                         r".*give fewer images or masks"):
        pipeline.inpaint(tiny_adm, torch.rand(1, 3, 8, 8), torch.ones(16, 8, 8), steps=2, sampler="ddpm")
