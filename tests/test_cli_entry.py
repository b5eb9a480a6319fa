"""The four command line tools' shared entry (``errors.run_main``), the one range table (``settings.RANGES``) and
``--help``: bad input is one line and exit status 2 in every CLI, real bugs keep their traceback, the argparse types
and the Python API's checks come from one table, every option states its default, and parsing imports no torch."""

import argparse
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_rad import convert, errors, evaluate, settings
from comfyui_rad import cli as inpaint_cli
from comfyui_rad.checks import HelpFormatter, Int, Real
from comfyui_rad.errors import MissingPackage, UserError, install_hint, run_main
from comfyui_rad.fileio import CheckpointError, atomic_write
from comfyui_rad.train import cli as train_cli

ROOT = Path(__file__).resolve().parent.parent

CLIS = {"rad-inpaint": inpaint_cli, "rad-eval": evaluate, "rad-convert": convert, "rad-train": train_cli}


def one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------- the entry helper


@pytest.mark.parametrize("error, status, line", [
    (UserError("--mask is empty: try --invert-mask"), 2, "tool: error: --mask is empty: try --invert-mask"),
    (ValueError("eta must be in [0, 1]\nsecond line"), 2, "tool: error: eta must be in [0, 1]"),
    (CheckpointError("not a checkpoint"), 2, "tool: error: not a checkpoint"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "in.png"), 2,
     "tool: error: No such file or directory: in.png"),
    (OSError(errno.ENOSPC, "No space left on device", "out.png"), 2, "tool: error: No space left on device: out.png"),
    (MissingPackage("needs peft: pip install peft"), 2, "tool: error: needs peft: pip install peft"),
    (KeyboardInterrupt(), 130, "tool: interrupted: nothing written"),
])
def test_run_main_turns_user_errors_into_one_line(error, status, line, capsys):
    def body():
        raise error

    assert run_main("tool", body, interrupted="nothing written") == status
    assert one_line(capsys, "tool") == line


def test_run_main_keeps_the_traceback_of_a_bug_and_takes_a_tools_own_failures(capsys):
    def bug():
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError, match="unsupported operand"):
        run_main("tool", bug)

    def collective():
        raise FloatingPointError("the loss is nan at step 3: lower --lr")

    assert run_main("tool", collective, also=(FloatingPointError,), where="[rank 1] ") == 2
    assert one_line(capsys, "tool") == "tool: [rank 1] error: the loss is nan at step 3: lower --lr"
    assert run_main("tool", lambda: None) == 0


def test_one_user_error_class():
    """The engine's own error kinds are UserErrors (and ValueErrors, for Python callers); the CLIs have no other."""
    from comfyui_rad.image_folders import DataError
    from comfyui_rad.perceptual import WeightsError

    for kind in (CheckpointError, DataError, WeightsError, MissingPackage):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError), kind
    assert issubclass(MissingPackage, ImportError)
    for module in CLIS.values():
        assert not hasattr(module, "CLIError"), module


def test_a_full_disk_names_the_file_not_the_temporary(tmp_path):
    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "result.png", full)
    line = errors.describe_error(caught.value)
    assert f"could not write the image {tmp_path / 'result.png'}: the disk is full" in line and ".tmp" not in line
    assert list(tmp_path.iterdir()) == []

    def denied(tmp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError) as caught:  # an OSError without a file name gets the target's, not the temporary's
        atomic_write(tmp_path / "result.png", denied)
    assert errors.describe_error(caught.value) == f"Permission denied: {tmp_path / 'result.png'}"


def test_every_cli_answers_bad_input_with_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert inpaint_cli.main(["--model", str(missing / "m.pt"), "--image", str(missing / "in.png"), "--mask", "box",
                             "-o", str(tmp_path / "out.png"), "-q"]) == 2
    assert "--model file" in one_line(capsys, "rad-inpaint: error")
    assert evaluate.main(["--model", str(missing / "m.pt"), "--images", str(tmp_path), "--out",
                          str(tmp_path / "r.json"), "-q"]) == 2
    assert "--model file" in one_line(capsys, "rad-eval: error")
    assert convert.main([str(missing), "-o", str(tmp_path / "out.safetensors"), "-q"]) == 2
    assert "does not exist" in one_line(capsys, "rad-convert: error")
    assert convert.main([str(missing), "-o", str(tmp_path / "out.pt"), "-q"]) == 2
    assert "-o " in one_line(capsys, "rad-convert: error")
    assert train_cli.main(["--export-from", str(missing), "--export", str(tmp_path / "a.safetensors"), "-q"]) == 2
    assert str(missing) in one_line(capsys, "rad-train: error")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_a_bad_flag_is_one_line_and_status_2(prog, capsys):
    with pytest.raises(SystemExit) as exit_:
        CLIS[prog].main(["--no-such-flag"])
    assert exit_.value.code == 2
    assert f"({prog} --help lists the options)" in one_line(capsys, f"{prog}: error")


def test_convert_refuses_to_write_onto_its_source(tmp_path, capsys):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"the user's model")
    assert convert.main([str(source), "-o", str(source), "--force", "-q"]) == 2
    assert "is the source file" in one_line(capsys, "rad-convert: error")
    assert source.read_bytes() == b"the user's model"


def test_convert_api_names_its_arguments(tmp_path):
    source = tmp_path / "checkpoint-1"
    source.mkdir()
    (tmp_path / "there.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="^dtype must be one of"):
        convert.convert(source, tmp_path / "o.safetensors", dtype="fp8")
    with pytest.raises(ValueError, match="^output .*o.pt: the output must be a .safetensors file"):
        convert.convert(source, tmp_path / "o.pt")
    with pytest.raises(ValueError, match="^output .* is inside the source folder"):
        convert.convert(source, source / "o.safetensors")
    with pytest.raises(FileExistsError, match="pass force=True"):
        convert.convert(source, tmp_path / "there.safetensors")


# ------------------------------------------------------------------------------------------- install hint


def test_install_hint_is_quoted_and_editable_in_a_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert install_hint("train") == 'pip install -e ".[train]"'
    monkeypatch.chdir(tmp_path)
    assert install_hint("train") == f'pip install -e "{ROOT}[train]"'
    monkeypatch.setattr(errors, "_checkout", lambda: None)  # an installed wheel: no pyproject.toml above it
    assert install_hint("train") == 'pip install "comfyui-rad[train]"'


def test_missing_peft_gives_the_quoted_hint(monkeypatch):
    from comfyui_rad.train.lora import require_peft

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingPackage) as caught:
        require_peft()
    assert install_hint("train") in str(caught.value) and '[train]"' in str(caught.value)


# ------------------------------------------------------------------------------------------- the range table


def _numeric_actions(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if isinstance(a.type, (Real, Int))]


@pytest.mark.parametrize("module", [inpaint_cli, evaluate])
def test_every_numeric_flag_takes_its_type_from_the_table(module):
    actions = _numeric_actions(module.build_parser())
    assert len(actions) >= 10
    for action in actions:
        expected = settings.RANGES[action.dest].arg_type()
        assert type(action.type) is type(expected) and vars(action.type) == vars(expected), action.dest


@pytest.mark.parametrize("name", sorted(settings.RANGES))
def test_the_cli_and_the_api_accept_the_same_values(name):
    """For values at, inside and past each end: the argparse type accepts exactly what the API check accepts; the
    CLI's error is argparse's (the flag is named by argparse), the API's names the argument."""
    r = settings.RANGES[name]
    ends = [v for v in (r.lo, r.hi) if v is not None]
    step = 1 if r.integer else 1e-3
    values = {0, 1, -1, 10**6, *r.also, *(e + d for e in ends for d in (-step, 0, step))}
    for value in sorted(values):
        try:
            settings.check(name, value)
            api = True
        except ValueError as err:
            assert str(err).startswith(f"{name} must be"), err
            assert "--" not in str(err)
            api = False
        try:
            arg = settings.arg_type(name)(str(value))
            assert arg == value
            cli = True
        except argparse.ArgumentTypeError:
            cli = False
        assert api == cli, (name, value)


def test_api_errors_name_the_argument_and_cli_errors_the_flag(capsys):
    from comfyui_rad.masks import check_threshold
    from comfyui_rad.sampling import check_resample

    with pytest.raises(ValueError, match=r"^threshold must be a finite number in \[0, 1\)"):
        check_threshold(1.0)
    with pytest.raises(ValueError, match=r"^resample must be a whole number in \[0, 100\], got 101"):
        check_resample(101, 10, 100)
    with pytest.raises(SystemExit):
        inpaint_cli.main(["--image", "a.png", "-o", "b.png", "--resample", "101"])
    assert "argument --resample: 101 is out of range: give a whole number in [0, 100]" in one_line(capsys, "rad-inpaint")


def test_the_settings_name_the_engines_registries():
    from comfyui_rad import devices, masks, pipeline, sampling
    from comfyui_rad.checkpoints import DEFAULT_MODEL

    assert sorted(sampling.SAMPLERS) == sorted(settings.SAMPLER_NAMES)
    assert set(settings.BASELINE_SAMPLERS) < set(settings.SAMPLER_NAMES)
    assert tuple(pipeline.FITS) == settings.FIT_NAMES
    assert tuple(masks.GENERATED_MASKS) == settings.MASK_KINDS
    assert tuple(devices.DTYPES) == settings.DTYPE_NAMES
    assert sampling.DEFAULT_STEPS == settings.DEFAULT_STEPS and set(settings.DEFAULT_STEPS) == set(sampling.SAMPLERS)
    assert DEFAULT_MODEL == settings.DEFAULT_MODEL


# --------------------------------------------------------------------------------------------------- --help


def _option_blocks(text: str) -> dict[str, str]:
    """--help's option section, flag -> its help text (wrapped lines joined)."""
    blocks, current = {}, None
    for line in text.split("\n\n", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            current = stripped.split()[0].rstrip(",")
            blocks[current] = stripped
        elif current is not None and line.startswith("    ") and stripped:
            blocks[current] += " " + stripped
        elif not stripped or not line.startswith(" "):
            current = None
    return blocks


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_help_states_every_options_default(prog):
    parser = CLIS[prog].build_parser()
    assert parser.formatter_class is HelpFormatter
    blocks = _option_blocks(parser.format_help())
    optional = [a for a in parser._actions if a.option_strings and not a.required and a.dest != "help"]
    assert len(optional) >= 4
    for action in optional:
        text = blocks[action.option_strings[0]]
        value = f"({action.default}"
        assert "default" in text or value in text, (prog, action.option_strings[0], text)
    if prog in ("rad-inpaint", "rad-eval"):
        assert "default" in blocks["--seed"] and "default" in blocks["--steps"]
    if prog == "rad-inpaint":
        assert blocks["--seed"].endswith("(default: 0)")
        assert blocks["--samples"].endswith("(default: 1)")


def test_rad_eval_help_names_the_authors_folders_and_ema():
    blocks = _option_blocks(evaluate.build_parser().format_help())
    assert "checkpoint-N folder" in blocks["--model"] and "--ema" in blocks["--model"]
    assert "unet_ema/" in blocks["--ema"]


def test_rad_train_help_prints_the_torchrun_example_on_two_lines():
    text = train_cli.build_parser().format_help()
    assert "--base ffhq_10m.pt \\\n             --out runs/ffhq8 --steps 100000" in text
    assert "--resize \\\n              --export rad-ffhq.safetensors" in text


@pytest.mark.parametrize("module", ["comfyui_rad.cli", "comfyui_rad.evaluate", "comfyui_rad.convert"])
def test_parsing_and_help_import_no_torch(module):
    """The parser needs no torch: build it, parse a command line and --help, and torch is still not imported."""
    code = (
        "import importlib, sys\n"
        f"cli = importlib.import_module({module!r})\n"
        "parser = cli.build_parser()\n"
        "try:\n"
        "    parser.parse_args(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'safetensors') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and done.stdout.strip().endswith("HEAVY []"), done.stdout[-500:]
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "(default" in done.stdout and not done.stderr, done.stderr


def test_refusing_to_clobber_names_force_in_each_interface(tmp_path, capsys):
    """The Python API says force=True, a CLI --force (the same check underneath)."""
    import torch

    from comfyui_rad.imaging import save_image

    save_image(torch.zeros(3, 4, 4), tmp_path / "a.png")
    with pytest.raises(FileExistsError, match="pass force=True"):
        save_image(torch.ones(3, 4, 4), tmp_path / "a.png")
    (tmp_path / "m.pt").write_bytes(b"never read")
    (tmp_path / "images").mkdir()
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "box.png").write_bytes(b"the user's picture")
    assert evaluate.main(["--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "images"), "--out",
                          str(tmp_path / "r.json"), "--masks", "box", "--grids", str(tmp_path / "grids"), "-q"]) == 2
    line = one_line(capsys, "rad-eval: error")
    assert "box.png already exists" in line and line.endswith("pass --force")
