"""comfyui_rad.fileio: the one atomic writer (no clobbering without force, umask mode, no temporaries left) and the
one state-dict reader."""

import os

import pytest
import torch

from comfyui_rad.fileio import CheckpointError, atomic_write, read_state_dict


def _text(content: str):
    def write(tmp):
        tmp.write_text(content)
    return write


def test_atomic_write_refuses_to_clobber_without_force(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    assert atomic_write(path, _text("one")) == path and path.read_text() == "one"  # the folder is made
    with pytest.raises(FileExistsError, match=r"out\.txt already exists: pass force=True to overwrite it"):
        atomic_write(path, _text("two"))  # the Python API's name by default (issue 19); a CLI passes its flag
    with pytest.raises(FileExistsError, match="pass --force"):
        atomic_write(path, _text("two"), flag="--force")
    assert path.read_text() == "one"
    atomic_write(path, _text("two"), force=True)
    assert path.read_text() == "two" and os.listdir(path.parent) == ["out.txt"]


def test_atomic_write_leaves_the_target_and_no_temporary_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("precious")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken, force=True)
    assert path.read_text() == "precious" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_gives_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.bin", lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_read_state_dict_reads_torch_files_safely(tmp_path):
    torch.save({"model": {"module.w": torch.ones(2)}}, tmp_path / "a.pt")
    sd, meta = read_state_dict(tmp_path / "a.pt")
    assert list(sd) == ["w"] and meta == {}
    torch.save({"w": torch.ones(1), "obj": object.__new__(torch.nn.Identity)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        read_state_dict(tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="unsupported extension '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        read_state_dict(tmp_path / "a.txt")
