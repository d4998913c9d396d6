"""Issue 22, items 5, 7, 10, 11: manifests with a BOM or undecodable lines, ``--out`` inside the inputs,
one-line setting errors of the config types, ``diagnose_mel`` input checks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from signals import harmonic

from vaefix_pl.cli.commands import main as vaefix
from vaefix_pl.core.errors import ModelError, SettingsError, VaefixError


def _clip(path: Path, n: int = 2400) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, harmonic(n, f0=220.0), 16000, subtype="PCM_16")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ 5. manifests
def test_bom_csv_and_latin1_txt_manifests_go_on_with_a_line_error(tmp_path):
    from vaefix_pl.data.inputs import discover_inputs

    for name in ("a", "b", "c", "beside"):
        _clip(tmp_path / f"{name}.wav")
    (tmp_path / "m.csv").write_bytes("\ufeffpath,label\na.wav,x\n".encode("utf-8"))
    (tmp_path / "m.txt").write_bytes(b"b.wav\ncaf\xe9.wav\nc.wav\n")  # Latin-1 line 2
    (tmp_path / "nocol.csv").write_text("file\na.wav\n", encoding="utf-8")
    entries = discover_inputs(
        [tmp_path / "m.csv", tmp_path / "m.txt", tmp_path / "nocol.csv", tmp_path / "beside.wav"]
    )
    ok = sorted(Path(e.path).name for e in entries if not e.error)
    assert ok == ["a.wav", "b.wav", "beside.wav", "c.wav"]
    errors = [e for e in entries if e.error]
    assert len(errors) == 2 and all(e.stage == "discover" for e in errors)
    assert any("m.txt: line 2: not UTF-8 text" in e.error for e in errors)
    assert any("needs a 'path' column" in e.error for e in errors)


# ------------------------------------------------------------------ 7. --out inside the inputs
def test_out_equal_to_the_input_folder_reconstructs_the_same_clips_each_time(tmp_path, tiny_model_dir):
    d = tmp_path / "d"
    _clip(d / "s1.wav")
    _clip(d / "s2.wav", 3000)
    argv = ["reconstruct", str(d), "--model", str(tiny_model_dir), "--out", str(d),
            "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    for _ in range(3):
        assert vaefix(argv) == 0
        assert [r["id"] for r in _read_csv(d / "metrics.csv")] == ["s1", "s2"]
    assert sorted(p.name for p in d.glob("*.wav")) == sorted(
        f"{s}{t}.wav" for s in ("s1", "s2") for t in ("", ".original", ".recon")
    )


# ------------------------------------------------------------------ 10. one-line setting errors
@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"seconds": -5}, "seconds"),
        ({"seconds": 0}, "seconds"),
        ({"offset": -1}, "offset"),
        ({"batch_size": 0}, "batch_size"),
    ],  # fmt: skip
)
def test_data_settings_are_refused_with_one_line(kwargs, word):
    from vaefix_pl.data.module import AudioDataModule

    with pytest.raises(SettingsError, match=word) as exc:
        AudioDataModule(inputs=None, **kwargs)
    assert "\n" not in str(exc.value)


def test_precision_and_unknown_repair_key_are_settings_errors():
    from vaefix_pl.core.config import ReconstructorConfig
    from vaefix_pl.repair.chain import PostProcessChain

    with pytest.raises(SettingsError, match="precision"):
        ReconstructorConfig(precision="fp64")
    with pytest.raises(SettingsError, match="unknown repair setting 'bandpas'"):
        PostProcessChain(bandpas=True)


def test_cli_rejects_negative_seconds_offset_and_batch_size_zero(tmp_path, tiny_model_dir):
    _clip(tmp_path / "in" / "a.wav")
    base = ["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
            "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    for extra in (["--seconds", "-5"], ["--seconds", "0"], ["--offset", "-1"], ["--batch-size", "0"]):
        assert vaefix([*base, *extra]) == SettingsError.exit_code  # the CLI prints it as one line
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_out_that_is_a_file_is_an_output_error(tmp_path, tiny_model_dir, capsys):
    from vaefix_pl.core.errors import OutputError

    _clip(tmp_path / "in" / "a.wav")
    (tmp_path / "o").write_text("a file")
    rc = vaefix(["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                 "--num-workers", "0", "--accelerator", "cpu"])  # fmt: skip
    assert rc == OutputError.exit_code and "is an existing file" in capsys.readouterr().err


def test_model_errors_are_vaefix_errors():
    from vaefix_pl.core.models import ModelConfigError, ModelNotFoundError

    assert issubclass(ModelNotFoundError, ModelError) and issubclass(ModelConfigError, ModelError)
    assert issubclass(ModelNotFoundError, FileNotFoundError) and issubclass(ModelConfigError, ValueError)
    assert ModelError.exit_code == 3 and issubclass(ModelError, VaefixError)


def _broken_model(src: Path, dst: Path, case: str) -> Path:
    import json
    import os
    import shutil

    shutil.copytree(src, dst)
    vae_cfg, voc_cfg = dst / "vae" / "config.json", dst / "vocoder" / "config.json"
    if case == "list":
        vae_cfg.write_text("[1, 2]")
    elif case == "upsample_rates":
        voc_cfg.write_text(json.dumps({**json.loads(voc_cfg.read_text()), "upsample_rates": "abc"}))
    elif case == "block_out_channels":
        vae_cfg.write_text(json.dumps({**json.loads(vae_cfg.read_text()), "block_out_channels": 5}))
    elif case == "malformed":
        vae_cfg.write_text('{"a": 1,')
    elif case == "loop":
        vae_cfg.unlink()
        os.symlink(dst / "vae" / "b", dst / "vae" / "a")
        os.symlink(dst / "vae" / "a", dst / "vae" / "b")
        os.symlink(dst / "vae" / "a", vae_cfg)
    elif case == "bin_only":
        (dst / "vocoder" / "model.safetensors").rename(dst / "vocoder" / "pytorch_model.bin")
    return dst


@pytest.mark.parametrize(
    "case, want",
    [
        ("list", "vae/config.json: must hold a JSON object, got list"),
        ("upsample_rates", "vocoder config 'upsample_rates' must be a non-empty list of integers, got 'abc'"),
        ("block_out_channels", "vae config 'block_out_channels' must be a non-empty list of integers, got 5"),
        ("malformed", "vae/config.json: not readable JSON (Expecting property name"),
        ("loop", "vae/config.json is a symbolic link loop"),
        ("bin_only", "only safetensors weights are loaded); save the model with safe_serialization=True"),
    ],
)
def test_broken_model_folders_are_one_line_model_errors_saying_what_is_wrong(
    tmp_path, tiny_model_dir, capfd, case, want
):
    model = _broken_model(tiny_model_dir, tmp_path / "m", case)
    _clip(tmp_path / "a.wav")
    rc = vaefix(["reconstruct", str(tmp_path / "a.wav"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--accelerator", "cpu", "--num-workers", "0"])  # fmt: skip
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == ModelError.exit_code and len(err) == 1 and "Traceback" not in err[0], err
    assert want in err[0], err
    assert (
        "hf download" not in err[0] and " is missing." not in err[0]
    )  # no download advice for a local folder


# ------------------------------------------------------------------ 11. diagnose-mel inputs
@pytest.mark.parametrize(
    "mel, word",
    [
        (np.zeros((0, 64), np.float32), "empty"),
        (np.float32(1.0), "0-d"),
        (np.ones((50, 64), np.complex64), "complex"),
    ],  # fmt: skip
)
def test_diagnose_mel_refuses_empty_scalar_and_complex(mel, word):
    from vaefix_pl.diagnose.mel import diagnose_mel

    with pytest.raises(SettingsError, match=word) as exc:
        diagnose_mel(mel)
    assert "\n" not in str(exc.value)


def test_diagnose_mel_cli_refuses_an_empty_mel(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((0, 64), np.float32))
    assert (
        vaefix(["diagnose-mel", str(tmp_path / "m.npy")]) == SettingsError.exit_code
    )  # the CLI prints it as one line
