"""Files on disk: the one atomic writer and the one safe state-dict reader.

- ``atomic_write``: a new file appears whole or not at all: written to a temporary file in the same folder, fsync'd,
  given the mode any new file gets (the umask's), then moved over the target with ``os.replace``. An existing file
  is refused unless ``force``. Every file comfyui-rad writes goes through it (models, adapters, images, JSON results,
  training checkpoints, benchmark results).
- ``read_state_dict``: tensors and metadata of a ``.safetensors`` or ``.pt/.pth/.ckpt/.bin`` file, never unpickling
  anything but tensors (``torch.load(weights_only=True)``, memory-mapped), with one-line errors (``CheckpointError``).
"""

from __future__ import annotations

import logging
import os
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

__all__ = ["CheckpointError", "TORCH_SUFFIXES", "atomic_write", "read_state_dict"]

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_WRAPPERS = ("ema", "state_dict", "model")


class CheckpointError(ValueError):
    """A file or state dict that is not what it should be; the message says what it is and what to do."""


# ----------------------------------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (changing it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, force: bool = False,
                 flag: str = "--force") -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, which is fsync'd, given the
    umask's mode (0666 & ~umask, whatever mode ``write`` created it with) and renamed over ``path``.

    An existing ``path`` is refused (FileExistsError naming ``flag``, the caller's way to say force) unless ``force``.
    The parent folder is created. On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists: pass {flag} to overwrite it, or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and str metadata of a ``.safetensors`` or ``.pt/.pth/.ckpt/.bin`` file (CPU, memory-mapped).

    Unwraps ``{"ema"|"state_dict"|"model": {...}}`` and ``module.`` prefixes. Torch files have no metadata ({}).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported extension {suffix!r}: use .safetensors, "
                              + ", ".join(TORCH_SUFFIXES))
    try:
        if suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        # mmap needs the zip format of torch >= 1.6; older (legacy) files are read whole.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any reader error means the same thing to the user
        raise CheckpointError(_unreadable(path, err)) from None
    return _unwrap(obj, path), {}


def _unreadable(path: Path, err: Exception) -> str:
    """One line saying why a reader failed (torch's messages are paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    if "Weights only load failed" in lines[0]:
        hit = next((line for line in lines if "Unsupported global" in line), lines[-1])
        hit = hit.split(" was not an allowed global")[0]
        return (f"{path} holds Python objects besides tensors, which comfyui-rad does not unpickle for safety "
                f"({hit}): if you trust the file, load it with torch.load(weights_only=False) and save its "
                "state_dict with safetensors")
    reason = lines[0] if len(lines[0]) <= 160 else lines[0].split(". ")[0]
    return (f"could not read {path} as a checkpoint (truncated download or not a checkpoint): "
            f"{type(err).__name__}: {reason}")


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(4):  # {"ema": {...}}, {"model": {"state_dict": {...}}}, ...
        if not isinstance(obj, Mapping) or any(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        key = next((k for k in inner if any(isinstance(v, Tensor) for v in obj[k].values())), inner[0])
        log.info("%s: using its %r entry (entries: %s)", path.name, key, ", ".join(map(str, obj)))
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors: "
                              "save model.state_dict() instead of the model object")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if len(sd) < len(obj):
        log.debug("%s: ignored %d non-tensor entries", path.name, len(obj) - len(sd))
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd
