"""What a user did wrong, and how every command line tool says so.

- ``UserError``: the one base class of a problem with the user's input or setup that one line explains (a bad
  value, a wrong file, a missing optional package). The engine's own kinds derive from it (``fileio.CheckpointError``,
  ``imaging.DataError``, ``perceptual.WeightsError``, ``MissingPackage``). It is a ValueError, so Python callers
  that catch ValueError keep working.
- ``run_main``: the body of every CLI's ``main()`` (rad-inpaint, rad-eval, rad-convert, rad-train). A UserError, a
  ValueError of the checks, an OSError (a missing file, an existing one, a full disk: it names the path) becomes one
  line ``prog: error: ...`` on stderr and exit status 2; Ctrl-C exit status 130 with one line; anything else is a bug
  and keeps its traceback.
- ``install_hint``: the pip command that adds an optional extra, quoted for zsh, editable in a source checkout.

Torch-free: a CLI imports this before it parses its arguments.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["UserError", "MissingPackage", "USER_ERRORS", "describe_error", "install_hint", "run_main",
           "setup_logging"]


class UserError(ValueError):
    """A problem with the user's input or setup: the message says what was wrong, the value and the fix, in the
    user's own interface (a CLI flag, a node input, a Python argument). CLIs print it as one line, exit status 2."""


class MissingPackage(UserError, ImportError):
    """An optional package a feature needs is not installed; the message gives the pip command."""


USER_ERRORS = (UserError, ValueError, OSError)
"""What ``run_main`` reports as one line (exit status 2): user errors, the checks' ValueErrors, and OSErrors
(FileNotFoundError, FileExistsError, PermissionError, a full disk ...)."""


def describe_error(error: BaseException) -> str:
    """One line for an error a CLI prints: an OSError as "what: file" (never a bare "[Errno 17] File exists")."""
    if isinstance(error, OSError) and not isinstance(error, FileExistsError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, FileExistsError) and error.strerror:
        return f"{error.filename} already exists and is not a folder: choose another path"
    return (str(error).splitlines() or [type(error).__name__])[0] or type(error).__name__


_ROOT = Path(__file__).resolve().parent.parent
"""The folder above the package: a source checkout when it holds this project's pyproject.toml."""


def _checkout() -> Path | None:
    try:
        text = (_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return _ROOT if 'name = "comfyui-rad"' in text else None


def install_hint(extra: str) -> str:
    """The command that installs the package's optional ``extra``: ``pip install -e ".[extra]"`` from a source
    checkout (the checkout's path instead of "." when the current folder is elsewhere), else
    ``pip install "comfyui-rad[extra]"``; quoted, since zsh reads brackets as a pattern."""
    root = _checkout()
    if root is None:
        return f'pip install "comfyui-rad[{extra}]"'
    try:
        here = Path.cwd().resolve() == root
    except OSError:
        here = False
    return f'pip install -e "{"." if here else root}[{extra}]"'


def run_main(prog: str, body: Callable[[], object], *, interrupted: str = "stopped without writing a partial file",
             where: str = "", also: tuple[type[BaseException], ...] = ()) -> int:
    """Run a CLI's ``body()`` (after its arguments are parsed) and return the exit status: 0 when it returns; 2 with
    one line ``prog: error: ...`` on stderr for ``USER_ERRORS`` and ``also`` (a tool's own known failures);
    130 with ``prog: interrupted: <interrupted>`` for Ctrl-C. Other exceptions are bugs: their traceback stays.
    ``where``: a prefix for the lines (rad-train's "[rank N] " under torchrun)."""
    try:
        body()
    except (*USER_ERRORS, *also) as err:
        print(f"{prog}: {where}error: {describe_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {where}interrupted: {interrupted}", file=sys.stderr)
        return 130
    finally:
        sys.stderr.flush()
    return 0


def setup_logging(quiet: bool, where: str = "") -> None:
    """The CLIs' logging: INFO and above (WARNING with ``quiet``) as ``LEVEL: message`` lines on stderr."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=f"{where}%(levelname)s: %(message)s")
