"""Every ``vaefix`` subcommand turns a user's mistake into one ``error:`` line and a documented exit code,
and a clean run shows none of the libraries' chatter."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaefix_pl.cli import commands as commands_module
from vaefix_pl.cli import main
from vaefix_pl.cli.errors import EXIT_INTERNAL, exit_code
from vaefix_pl.core.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["reconstruct", "predict", "demo", "diagnose", "diagnose-mel", "export-mels", "report", "convert"]


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def bad_geometry_dir(tmp_path_factory) -> Path:
    """A tiny model whose vocoder is a 22.05 kHz, 80-mel one: not AudioLDM2's geometry."""
    from vaefix_pl.testing import write_tiny_audioldm2

    path = write_tiny_audioldm2(tmp_path_factory.mktemp("badgeom"), seed=0)
    cfg_path = Path(path) / "vocoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(model_in_dim=80, sampling_rate=22050, upsample_rates=[8, 4, 2, 2, 2])  # product 256
    cfg_path.write_text(json.dumps(cfg))
    return Path(path)


def _argv(command: str, tmp: Path, inputs: str | None, model: str) -> list[str]:
    out = str(tmp / "out")
    if command == "reconstruct":
        return [command, inputs, "--model", model, "--out", out]
    if command == "predict":
        return [command, f"--data.inputs=[{inputs}]", f"--model.model={model}", f"--writer.output_dir={out}",
                "--data.num_workers=0"]  # fmt: skip
    if command == "demo":
        return [command, "--model", model, "--out", out] + ([inputs] if inputs else [])
    if command == "diagnose":
        return [command, inputs, "--model", model, "--out", out]
    if command == "export-mels":
        return [command, inputs, "--model", model, "--out", out, "--num-workers", "0", "--accelerator", "cpu"]
    if command == "diagnose-mel":
        return [command, inputs or str(tmp / "mel.npy"), "--model", model]
    if command == "report":
        return [command, inputs or str(tmp), "--model", model]
    if command == "convert":
        return [command, inputs or str(tmp / "model.ckpt"), "--out", out, "--model", model]
    raise AssertionError(command)


def _one_error_line(capfd, rc: int) -> str:
    out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc != 0, (out, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1, err
    assert "error:" in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_input_is_one_line(command, tmp_path, tiny_model_dir, capfd):
    missing = str(tmp_path / "missing.wav")
    rc = main(_argv(command, tmp_path, missing, str(tiny_model_dir)))
    line = _one_error_line(capfd, rc)
    if command not in ("demo", "diagnose-mel", "report", "convert"):  # these have no --model / no inputs
        assert line == f"error: {missing}: no such file or folder"
        assert rc == 4


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_model_is_one_line(command, tmp_path, wav, capfd):
    inputs = None if command in ("demo", "diagnose-mel", "report", "convert") else str(wav)
    rc = main(_argv(command, tmp_path, inputs, "/nowhere"))
    line = _one_error_line(capfd, rc)
    if command in ("reconstruct", "predict", "demo", "diagnose", "export-mels"):
        assert rc == 3 and "/nowhere" in line and 'hf download cvssp/audioldm2 --include "vae/*"' in line
    else:  # no --model flag: the unknown flag is named
        assert "--model" in line


@pytest.mark.parametrize("command", ["reconstruct", "predict", "diagnose", "export-mels"])
def test_wrong_geometry_model_is_one_line(command, tmp_path, wav, bad_geometry_dir, capfd):
    rc = main(_argv(command, tmp_path, str(wav), str(bad_geometry_dir)))
    line = _one_error_line(capfd, rc)
    assert rc == 3 and str(bad_geometry_dir) in line


def test_debug_flag_and_env_show_the_traceback(tmp_path, wav, monkeypatch):
    from vaefix_pl.core.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        main(["--debug", "reconstruct", str(wav), "--model", "/nowhere", "--out", str(tmp_path)])
    monkeypatch.setenv("VAEFIX_DEBUG", "1")
    with pytest.raises(ModelNotFoundError):
        main(["reconstruct", str(wav), "--model", "/nowhere", "--out", str(tmp_path)])


def test_unknown_error_is_an_internal_error_line(monkeypatch, capfd):
    def boom(argv):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(commands_module, "_resolve", lambda target: boom)
    rc = main(["report", "x"])
    _, err = capfd.readouterr()
    assert rc == EXIT_INTERNAL == 70
    assert (
        err.strip()
        == "error: internal error: RuntimeError: something broke (run with --debug for the traceback)"
    )


def test_mistyped_command_gets_did_you_mean(capfd):
    assert main(["reconstuct", "a.wav"]) == 2
    _, err = capfd.readouterr()
    assert err.strip() == "error: unknown command 'reconstuct'; did you mean 'reconstruct'?"


def test_demo_rejects_unknown_flags(capfd):
    rc = main(["demo", "--frobnicate"])
    assert rc == 2 and "--frobnicate" in _one_error_line(capfd, rc)


def test_exit_codes_are_documented():
    from vaefix_pl.core.models import ModelConfigError, ModelNotFoundError

    for exc in (ModelNotFoundError("x"), ModelConfigError("x"), FileNotFoundError("x")):
        assert exit_code(exc) in EXIT_CODES
    readme = (ROOT / "README.md").read_text()
    for code in (2, 3, 4, 5, 70):
        assert f"| {code} |" in readme


def test_help_shows_defaults(capfd):
    assert main(["reconstruct", "--help"]) == 0
    out, _ = capfd.readouterr()
    assert "(default: outputs/reconstruct)" in out
    assert "--seed-repair" not in out and "--repair" in out


NOISE = (
    "litlogger", "litmodels", "GPU available", "TPU available", "set_float32_matmul_precision", "_pytree",
    "LeafSpec", "Loading weights", "Writing model shards", "Traceback", "💡",
)  # fmt: skip


def test_clean_run_has_no_library_noise(tmp_path, wav, tiny_model_dir):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("VAEFIX_DEBUG", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav), "--model", str(tiny_model_dir),
         "--out", str(out), "--report", "--num-workers", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    for noise in NOISE:
        assert noise not in text, noise
    assert f"report: {out / 'report.html'}" in proc.stdout
    assert "[nan, nan]" not in proc.stdout  # n = 1: no interval to show


@pytest.mark.parametrize("command", ["diagnose", "diagnose-mel", "export-mels", "report", "demo"])
def test_config_file_and_print_config_on_argparse_commands(command, tmp_path, capfd):
    import yaml

    cfg = tmp_path / "c.yaml"
    key, value = {"diagnose": ("seconds", 3.0), "diagnose-mel": ("framing", "hifigan"),
                  "export-mels": ("shard-size", 5), "report": ("max-figures", 2),
                  "demo": ("out", "elsewhere")}[command]  # fmt: skip
    cfg.write_text(yaml.safe_dump({key: value}))
    positional = {"diagnose-mel": ["m.npy"], "report": ["x"], "export-mels": ["--out", "o"]}.get(command, [])
    assert main([command, *positional, "--config", str(cfg), "--print_config"]) == 0
    shown = yaml.safe_load(capfd.readouterr().out)
    assert shown[key.replace("-", "_")] == value
    # an explicit flag wins over the file
    assert (
        main(
            [
                command,
                *positional,
                "--config",
                str(cfg),
                f"--{key}",
                "7" if key != "framing" and key != "out" else "tacotron",
                "--print_config",
            ]
        )
        == 0
    )  # noqa: E501
    assert yaml.safe_load(capfd.readouterr().out)[key.replace("-", "_")] != value
    cfg.write_text("no_such_option: 1\n")
    rc = main([command, *positional, "--config", str(cfg)])
    assert rc == 2 and "unknown option 'no_such_option'" in _one_error_line(capfd, rc)


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capfd):
    """``vaefix cache info|clear [KEY]`` is wired to core.compile_cache.cache_main, with the CLI's errors."""
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path))
    entry = tmp_path / "compile" / "k123"
    entry.mkdir(parents=True)
    (entry / "blob").write_bytes(b"x" * 2048)
    assert main(["cache", "info"]) == 0
    out, _ = capfd.readouterr()
    assert "1 entry" in out and "k123" in out
    rc = main(["cache", "clear", "nokey"])
    assert rc == 2 and "nokey" in _one_error_line(capfd, rc)
    rc = main(["cache", "purge"])
    assert rc == 2 and "purge" in _one_error_line(capfd, rc)
    assert main(["cache", "clear", "k123"]) == 0
    assert not entry.exists() and "2.0 KiB freed" in capfd.readouterr().out
    assert main(["cache", "--help"]) == 0
    assert "info" in capfd.readouterr().out


@pytest.mark.parametrize("command", ["reconstruct", "predict", "demo", "diagnose", "diagnose-mel", "export-mels",
                                     "report", "models", "convert", "cache"])  # fmt: skip
def test_every_command_has_config_and_print_config(command, capfd):
    assert main([command, "--help"]) == 0
    out = capfd.readouterr().out
    assert "--config" in out and "--print_config" in out


def test_mistyped_flag_gets_did_you_mean(capfd):
    rc = main(["report", "x", "--max-figurs", "3"])
    line = _one_error_line(capfd, rc)
    assert rc == 2 and line == (
        "error: vaefix report: unknown flag --max-figurs; did you mean --max-figures? (see vaefix report --help)"
    )


def test_report_cli_defaults_are_the_reports():
    from vaefix_pl.cli import report as cli_report
    from vaefix_pl.report import html

    assert cli_report.DEFAULT_EMBED_AUDIO_CLIPS == html.DEFAULT_EMBED_AUDIO_CLIPS
    assert cli_report.DEFAULT_MAX_FIGURES == html.DEFAULT_MAX_FIGURES


def test_parsers_import_jsonargparse_only_when_a_command_runs():
    code = "import sys, vaefix_pl.cli.commands, vaefix_pl.cli.report; print('jsonargparse' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_module_entry_writes_complete_runs_and_exit_codes(tmp_path, wav, tiny_model_dir):
    """``python -m vaefix_pl.cli`` (the console script's code): every file of a run complete, and a
    bad input's exit status."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("VAEFIX_DEBUG", "VAEFIX_FAST_EXIT")}
    cmd = [sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav), "--model", str(tiny_model_dir),
           "--out", str(out), "--num-workers", "0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_inputs"], summary["n_ok"], summary["n_failed"]) == (1, 1, 0)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["snr"]) == pytest.approx(summary["metrics"]["snr"]["mean"])
    assert (out / f"{wav.stem}.recon.wav").stat().st_size > 44
    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "absent.wav"), *cmd[5:-4], "--out", str(tmp_path / "o2")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert missing.returncode == 4, missing.stderr
    assert missing.stderr.count("\n") == 1 and "absent.wav" in missing.stderr
