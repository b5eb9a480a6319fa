"""rad-train's settings: one range table behind the flags, the config file and the API; --config, --print-config,
<out>/config.toml and --resume reading it (refusing a recipe change, warning on a harmless one)."""

from __future__ import annotations

import logging
import tomllib

import pytest
from test_train import write_images

from comfyui_rad.train.cli import build_parser, main
from comfyui_rad.train.loop import TrainOptions
from comfyui_rad.train.options import API, CLI, RANGES, read_config
from comfyui_rad.train.state import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("config") / "data", 5)


def test_one_range_table_names_flags_on_the_cli_and_fields_in_the_api(tmp_path, capsys):
    parser = build_parser()
    typed = {a.dest for a in parser._actions if a.type is not None and a.dest in RANGES}
    assert typed == set(RANGES)  # every range is a flag's type, and every numeric flag has its range here
    opts = TrainOptions(data=tmp_path, out=tmp_path / "o", preset="tiny", lr=2.0)
    with pytest.raises(ValueError, match=r"^lr must be a finite number in \(0, 1\], got 2.0"):
        opts.check(API)
    with pytest.raises(ValueError, match=r"^--lr must be a finite number in \(0, 1\]"):
        opts.check(CLI)
    with pytest.raises(SystemExit):
        main(["--lr", "2"])
    assert "argument --lr: 2 is out of range: give a number in (0, 1]" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = 2.0\n")
    assert main(["--config", str(bad)]) == 2
    assert "bad.toml: lr must be a finite number in (0, 1], got 2.0" in capsys.readouterr().err
    bad.write_text("batchsize = 4\n")
    assert main(["--config", str(bad)]) == 2
    assert "bad.toml: unknown option 'batchsize' (did you mean batch_size?)" in capsys.readouterr().err
    bad.write_text("flip = 1\nlr = [\n")
    assert main(["--config", str(bad)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    bad.write_text("flip = 1\n")
    assert main(["--config", str(bad)]) == 2
    assert "bad.toml: flip must be true or false, got 1" in capsys.readouterr().err


def test_config_round_trip_print_load_override_resume(data, tmp_path, capsys, caplog):
    """--print-config is a complete file at the defaults; edited, it trains (flags override it); the run folder
    keeps the resolved settings; --resume needs only --out; a recipe change is refused, a harmless one warned."""
    assert main(["--print-config"]) == 0
    text = capsys.readouterr().out
    printed = tomllib.loads(text)
    defaults = {a.dest: a.default for a in build_parser()._actions}
    assert printed and all(list(v) == list(defaults[k]) if isinstance(v, list) else v == defaults[k]
                           for k, v in printed.items())
    assert "# --lr: AdamW learning rate" in text and "# data =" in text  # commented; unset options commented out
    assert {"lr", "batch_size", "val_every", "flip", "scale_range"} <= set(printed)
    out = tmp_path / "run"
    edited = text.replace("# data =", f'data = "{data}"').replace("# preset =", 'preset = "tiny"')
    edited = edited.replace("# out =", f'out = "{out}"')
    for key, value in (("batch_size", 2), ("steps", 2), ("holdout", 1), ("preview_every", 0), ("workers", 0),
                       ("save_every", 2), ("val_every", 0), ("log_every", 1)):
        edited = edited.replace(f"\n{key} = {printed[key]}\n", f"\n{key} = {value}\n")
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(edited)
    assert read_config(run_toml, build_parser())["batch_size"] == 2
    assert main(["--config", str(run_toml), "--steps", "3", "--lr", "0.001", "-q"]) == 0  # flags override
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["steps"] == 3 and saved["lr"] == 0.001 and saved["batch_size"] == 2 and saved["preset"] == "tiny"
    assert "resume" not in saved and "config" not in saved
    assert load_checkpoint(out)["step"] == 3
    # --resume with --out alone: every setting from config.toml
    assert main(["--out", str(out), "--resume", "--steps", "4", "-q"]) == 0
    state = load_checkpoint(out)
    assert state["step"] == 4 and state["run"]["options"]["lr"] == 0.001
    assert tomllib.loads((out / "config.toml").read_text())["steps"] == 4
    # a recipe change is refused, naming it; --force accepts it
    assert main(["--out", str(out), "--resume", "--steps", "5", "--lr", "0.01", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.001 -> 0.01" in err and "would not continue exactly" in err and "--force" in err
    assert [p.name for p in list_checkpoints(out)][-1] == "step-0000004.pt"
    # a harmless change is warned about
    with caplog.at_level(logging.WARNING):
        assert main(["--out", str(out), "--resume", "--steps", "5", "--workers", "1"]) == 0
    assert "resuming with changed options: --workers 0 -> 1" in caplog.text
    assert load_checkpoint(out)["step"] == 5
