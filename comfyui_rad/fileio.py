"""Files on disk: the one atomic writer, the one safe state-dict reader, comfyui-rad's own files, and hashes.

- ``atomic_write``: a new file appears whole or not at all: written to a temporary file in the same folder, fsync'd,
  given the mode any new file gets (the umask's), then moved over the target with ``os.replace``. An existing file
  is refused unless ``force``. Every file comfyui-rad writes goes through it (models, adapters, images, JSON results,
  training checkpoints, benchmark results); a full disk is one ``DiskFullError`` naming the file and what it held.
- ``read_state_dict``: tensors and metadata of a ``.safetensors`` or ``.pt/.pth/.ckpt/.bin`` file, never unpickling
  anything but tensors (``torch.load(weights_only=True)``, memory-mapped), with one-line errors (``CheckpointError``).
- ``write_safetensors``: a comfyui-rad file (``MODEL_FORMAT`` or ``ADAPTER_FORMAT``, ``FORMAT_VERSION``), its
  metadata headed by the format and closed by ``created_by``; what the formats hold is ``checkpoints``' and
  ``adapters``' business.
- ``file_sha256`` (a file's bytes) and ``weights_sha256`` (its tensors: the same for a .pt and its .safetensors
  copy): how an adapter names its base. Cached per (path, size, mtime) for files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .errors import UserError
from .version import CREATED_BY

__all__ = [
    "CheckpointError", "DiskFullError", "TORCH_SUFFIXES", "ADAPTER_FORMAT", "MODEL_FORMAT", "FORMAT_VERSION",
    "atomic_write", "write_safetensors", "read_state_dict", "sniff", "file_sha256", "weights_sha256", "file_weights_sha256",
]

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ADAPTER_FORMAT = "comfyui-rad.adapter"
MODEL_FORMAT = "comfyui-rad.model"
FORMAT_VERSION = "1"
_WRAPPERS = ("ema", "state_dict", "model")


class CheckpointError(UserError):
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


class DiskFullError(OSError):
    """A write that ran out of room (ENOSPC, EFBIG, EDQUOT): its message is one line naming the file and what it
    held; nothing was written (``atomic_write`` removed its temporary file, an older file of that name is intact)."""


_FULL = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is too large for this file system",
         errno.EDQUOT: "the disk quota is exceeded"}
_WRITTEN = {".pt": "training checkpoint", ".safetensors": "weights", ".png": "image", ".jpg": "image",
            ".jpeg": "image", ".webp": "image", ".json": "results"}


def _out_of_room(err: BaseException, folder: Path) -> str | None:
    """Why a write into ``folder`` failed when it ran out of room, else None. torch and safetensors wrap the OSError
    in their own errors (torch: "unexpected pos", "file write failed"), so their text, and the room left on the
    disk (read before the temporary file is removed), are read too."""
    if isinstance(err, OSError) and err.errno in _FULL:
        return _FULL[err.errno]
    if not isinstance(err, Exception):
        return None  # Ctrl-C, SystemExit
    text = str(err)
    for code, reason in _FULL.items():
        if os.strerror(code) in text or f"code: {code}," in text:
            return reason
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        full = False
    if full or "file write failed" in text or "unexpected pos" in text:
        return "the write failed (the disk is probably full)" if not full else _FULL[errno.ENOSPC]
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, force: bool = False,
                 flag: str = "force=True", what: str | None = None) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, which is fsync'd, given the
    umask's mode (0666 & ~umask, whatever mode ``write`` created it with) and renamed over ``path``.

    An existing ``path`` is refused (FileExistsError naming ``flag``, the caller's way to say force: a CLI passes
    "--force") unless ``force``. The parent folder is created. On any error the temporary file is removed and
    ``path`` is untouched; a full disk (or a file too large, a quota) is a ``DiskFullError`` naming ``path`` and
    ``what`` it holds (default from its suffix: image, weights, training checkpoint, results).
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
    except BaseException as err:
        reason = _out_of_room(err, path.parent)
        tmp.unlink(missing_ok=True)
        if reason is None:
            if isinstance(err, OSError) and err.strerror and err.filename in (None, str(tmp), tmp):
                err.filename = str(path)  # name the file the user asked for, not the temporary
            raise
        what = what or _WRITTEN.get(path.suffix.lower(), "file")
        raise DiskFullError(getattr(err, "errno", None) or errno.ENOSPC,
                            f"could not write the {what} {path}: {reason}; nothing was written (an older file of "
                            "that name is intact): free some space or write elsewhere") from None
    return path


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], fmt: str, metadata: Mapping[str, str],
                      *, extra: Mapping[str, Any] | None = None, force: bool = False,
                      protect: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write a comfyui-rad ``.safetensors`` file with ``atomic_write`` (never half a file; refused without ``force``).

    Its metadata: ``format`` = ``fmt``, ``format_version``, ``metadata``, ``created_by``, then the caller's ``extra``
    (``extra_metadata``: JSON for values that are not strings; it may not set a key of comfyui-rad's). ``protect``:
    files the output must not be (a base checkpoint).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: comfyui-rad writes .safetensors files: use a name ending in .safetensors")
    if any(p is not None and Path(p).exists() and path.exists() and path.samefile(p) for p in protect):
        raise FileExistsError(f"{path} is the base checkpoint itself: choose another output name")
    header = {"format": fmt, "format_version": FORMAT_VERSION, **metadata, "created_by": CREATED_BY}
    clash = sorted(set(extra or {}) & set(header))
    if clash:
        raise ValueError(f"extra_metadata may not set {', '.join(clash)}: these are written by comfyui-rad")
    header.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata=header), force=force, flag="force=True")
    log.info("wrote %s (%d tensors)", path, len(tensors))
    return path


# ----------------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and str metadata of a ``.safetensors`` or ``.pt/.pth/.ckpt/.bin`` file (CPU, memory-mapped).

    Unwraps ``{"ema"|"state_dict"|"model": {...}}`` and ``module.`` prefixes. Torch files have no metadata ({}).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: give the .safetensors or "
                              f"{'/'.join(TORCH_SUFFIXES)} file itself")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported extension {suffix!r}: use .safetensors, "
                              + ", ".join(TORCH_SUFFIXES))
    kind = sniff(path)
    if kind is not None and kind != ("safetensors" if suffix == ".safetensors" else "torch"):
        raise CheckpointError(_misnamed(path, kind))
    try:
        if suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        # mmap needs the zip format of torch >= 1.6; older (legacy) files are read whole.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any reader error means the same thing to the user
        raise CheckpointError(_unreadable(path, err, kind)) from None
    return _unwrap(obj, path), {}


def sniff(path: str | os.PathLike) -> str | None:
    """What a file is by its first bytes: "safetensors", "torch" (a zip with a data.pkl, or a legacy pickle),
    "pickle" (a pickle that is not a torch file), "zip" (another zip), "html", "lfs" (a Git LFS pointer), "text",
    or None when it is none of these (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):  # a damaged zip (a truncated .pt): the reader says so
            return None
        return "torch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6)):
        return "torch" if b"torch" in head or head[2:3] == b"\x8a" else "pickle"
    text = head.lstrip()
    if text.lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    if text.startswith(b"version https://git-lfs"):
        return "lfs"
    if head and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in head):
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    return None


_KINDS = {
    "safetensors": "a safetensors file: rename it to .safetensors",
    "torch": "a torch checkpoint (pickle): rename it to .pt",
    "pickle": "a plain Python pickle, not a torch checkpoint: comfyui-rad does not unpickle it",
    "zip": "a zip archive that is not a torch checkpoint (no data.pkl inside): unpack it, or get the checkpoint itself",
    "html": "a web page (a failed or blocked download?): download the checkpoint again",
    "lfs": "a Git LFS pointer, not the file itself: fetch it with git lfs pull",
    "text": "a text file, not a checkpoint",
}


def _misnamed(path: Path, kind: str) -> str:
    """One line for a file that is not what its extension says."""
    return f"{path} is not a {path.suffix} checkpoint: it is {_KINDS[kind]}"


def _unreadable(path: Path, err: Exception, kind: str | None = None) -> str:
    """One line saying why a reader failed (torch's messages are paragraphs); ``kind`` is ``sniff``'s. Only a file
    that is a torch pickle is said to hold Python objects (never advise unsafe loading for anything else)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    if "Weights only load failed" in lines[0] and kind == "torch":
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


# ------------------------------------------------------------------------------------------------------ hashes

_HASHES: dict[tuple, str] = {}


def _stat_key(kind: str, path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return kind, str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached in-process per (path, size, mtime)."""
    key = _stat_key("file", path)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over sorted key names, shapes and float32 values: the same for a .pt and its .safetensors copy."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach()
        h.update(json.dumps([key, list(t.shape)]).encode())
        h.update(t.to("cpu", torch.float32).contiguous().reshape(-1).numpy())
    return h.hexdigest()


def file_weights_sha256(path: str | os.PathLike, state_dict: Mapping[str, Tensor] | None = None) -> str:
    """``weights_sha256`` of the file at ``path`` (``state_dict``: its tensors, when already read), cached like
    ``file_sha256``."""
    key = _stat_key("weights", path)
    if key not in _HASHES:
        _HASHES[key] = weights_sha256(state_dict if state_dict is not None else read_state_dict(path)[0])
    return _HASHES[key]
