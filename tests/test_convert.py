"""Conversion round trip against the ORIGINAL modules (tests/original_models.py), and safe loading."""

from __future__ import annotations

import json
import os
import pickletools
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from original_models import Generator, LdmAutoencoderKL

from vaefix_pl.convert import (
    ConversionError,
    UnsafeCheckpointError,
    convert_checkpoint,
    convert_main,
    load_state,
)
from vaefix_pl.core.geometry import match_geometry
from vaefix_pl.core.hifires import HiFiResVocoder, load_vocoder
from vaefix_pl.testing import (
    TINY_ORIGINAL,
    tiny_original_states,
    write_tiny_original_ldm,
    write_tiny_tango,
)

VOCODER_RATES = {"audioldm_16k": [5, 4, 2, 2, 2], "audioldm_48k": [6, 5, 4, 2, 2]}


def reference_models(geometry: str, seed: int) -> tuple[LdmAutoencoderKL, Generator]:
    """The original modules, loaded strictly with the same random original-layout weights."""
    a = TINY_ORIGINAL[geometry]
    vae_sd, voc_sd = tiny_original_states(geometry, seed)
    vae = LdmAutoencoderKL(a["ch"], a["ch_mult"], a["num_res_blocks"], a["z_channels"])
    vae.load_state_dict(vae_sd, strict=True)
    voc = Generator(
        a["n_mels"],
        VOCODER_RATES[geometry],
        a["upsample_kernel_sizes"],
        a["upsample_initial_channel"],
        a["resblock_kernel_sizes"],
        [[1, 3, 5]] * len(a["resblock_kernel_sizes"]),
        hifires=geometry == "audioldm_48k",
    )
    voc.load_state_dict(voc_sd, strict=True)
    return vae.double().eval(), voc.double().eval()


def check_same_outputs(out: Path, geometry: str, seed: int) -> None:
    ref_vae, ref_voc = reference_models(geometry, seed)
    vae = AutoencoderKL.from_pretrained(str(out / "vae"), use_safetensors=True, local_files_only=True)
    vae = vae.double().eval()
    voc = load_vocoder(out / "vocoder").double()
    n_mels = TINY_ORIGINAL[geometry]["n_mels"]
    down = 2 ** (len(TINY_ORIGINAL[geometry]["ch_mult"]) - 1)
    gen = torch.Generator().manual_seed(5)
    mel = torch.randn(2, 1, 4 * down, n_mels, generator=gen, dtype=torch.float64) - 4.0
    with torch.no_grad():
        mean_ours = vae.encode(mel).latent_dist.mode()
        mean_ref = ref_vae.encode_mean(mel)
        assert (
            mean_ours.shape == mean_ref.shape == (2, TINY_ORIGINAL[geometry]["z_channels"], 4, n_mels // down)
        )
        assert (mean_ours - mean_ref).abs().max().item() < 1e-6
        dec_ours = vae.decode(mean_ref).sample
        dec_ref = ref_vae.decode(mean_ref)
        assert dec_ours.shape == dec_ref.shape == mel.shape
        assert (dec_ours - dec_ref).abs().max().item() < 1e-6
        assert dec_ref.abs().max().item() > 1e-3
        wav_ours = voc(mel[:, 0])
        wav_ref = ref_voc(mel[:, 0].transpose(1, 2))[:, 0]
    hop = 160 if geometry == "audioldm_16k" else 480
    if geometry == "audioldm_48k":
        assert isinstance(voc, HiFiResVocoder)
        assert wav_ours.shape[-1] == 4 * down * hop
    assert wav_ours.shape == wav_ref.shape
    assert (wav_ours - wav_ref).abs().max().item() < 1e-6
    assert wav_ref.abs().max().item() > 1e-3


@pytest.mark.parametrize(
    ("geometry", "audioldm2", "weight_norm", "kind", "sample_size"),
    [
        ("audioldm_16k", True, False, "audioldm2", 1024),
        ("audioldm_16k", False, True, "audioldm", 512),
        ("audioldm_48k", True, False, "audioldm_48k", 1024),
        ("audioldm_48k", True, True, "audioldm_48k", 1024),
    ],
)
def test_ldm_checkpoint_round_trip(tmp_path, geometry, audioldm2, weight_norm, kind, sample_size):
    ckpt = write_tiny_original_ldm(
        tmp_path / "model.ckpt",
        geometry,
        seed=3,
        scale_factor=0.8125,
        audioldm2=audioldm2,
        vocoder_weight_norm=weight_norm,
    )
    result = convert_checkpoint(ckpt, tmp_path / "out")
    assert (result.kind, result.geometry, result.scaling_factor, result.sample_size) == (
        kind,
        geometry,
        0.8125,
        sample_size,
    )
    out = tmp_path / "out"
    for f in (
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vocoder/config.json",
        "vocoder/model.safetensors",
        "conversion.json",
    ):
        assert (out / f).is_file(), f
    assert not list(out.rglob("*.bin"))
    vae_cfg = json.loads((out / "vae/config.json").read_text())
    voc_cfg = json.loads((out / "vocoder/config.json").read_text())
    assert vae_cfg["scaling_factor"] == 0.8125
    assert voc_cfg["normalize_before"] is False
    assert match_geometry(vae_cfg, voc_cfg).name == geometry
    assert json.loads((out / "conversion.json").read_text())["sha256"] == result.sha256
    check_same_outputs(out, geometry, seed=3)


def test_tango_round_trip(tmp_path):
    src = write_tiny_tango(tmp_path / "tango", seed=4, scale_factor=0.9227914214134216)
    result = convert_checkpoint(src, tmp_path / "out")  # the folder; the .bin file works as well
    assert (result.kind, result.geometry, result.scaling_factor) == (
        "tango",
        "audioldm_16k",
        0.9227914214134216,
    )
    check_same_outputs(tmp_path / "out", "audioldm_16k", seed=4)
    again = convert_checkpoint(src / "pytorch_model_vae.bin", tmp_path / "out2", kind="tango")
    assert again.sha256 == result.sha256


def test_tango_config_must_match_weights(tmp_path):
    src = write_tiny_tango(tmp_path / "tango")
    cfg = json.loads((src / "vae_config.json").read_text())
    cfg["ddconfig"]["ch_mult"] = [1, 2, 4]
    (src / "vae_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="ch_mult"):
        convert_checkpoint(src, tmp_path / "out")


class _RunsCode:
    """Pickles as a call to os.system: loading it with weights_only=False would run the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil)
    # the file really carries the call (so the test could fail), yet nothing has run it yet
    import zipfile

    with zipfile.ZipFile(evil) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert "system" in " ".join(str(arg) for _, arg, _ in pickletools.genops(data))
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError) as info:
        load_state(evil)
    assert "\n" not in str(info.value) and str(evil) in str(info.value)
    assert re.search(
        r"refused: loading it would need unpickling of code \(it names (posix|nt)\.system\)", str(info.value)
    )
    assert not marker.exists()

    assert convert_main([str(evil), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "vae").exists()


def test_convert_main_success_and_errors(tmp_path, capsys):
    ckpt = write_tiny_original_ldm(tmp_path / "m.ckpt", "audioldm_16k", scale_factor=None)
    # no scale_factor in the checkpoint: refused, then accepted with an explicit value
    assert convert_main([str(ckpt), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scale_factor" in err
    assert convert_main([str(ckpt), "--out", str(tmp_path / "o"), "--scaling-factor", "0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "o/vae/config.json").read_text())["scaling_factor"] == 0.5
    # an existing output is not overwritten by accident
    assert convert_main([str(ckpt), "--out", str(tmp_path / "o"), "--scaling-factor", "0.5"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        convert_main([str(ckpt), "--out", str(tmp_path / "o"), "--scaling-factor", "0.5", "--overwrite"]) == 0
    )
    capsys.readouterr()
    # missing file, not a checkpoint, wrong kind
    for argv, needle in (
        ([str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x")], "no such file"),
        (
            [str(tmp_path / "o/vae/config.json"), "--out", str(tmp_path / "x")],
            "not a plain-tensor checkpoint",
        ),
        (
            [str(ckpt), "--out", str(tmp_path / "x"), "--kind", "audioldm_48k", "--scaling-factor", "1"],
            "does not fit",
        ),
    ):
        assert convert_main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def test_unsupported_vocoder_is_one_line(tmp_path, capsys):
    vae, voc = tiny_original_states("audioldm_16k", 0)
    voc["conv_pre.weight"] = torch.zeros(32, 80, 7)  # an 80-mel vocoder
    sd = {f"first_stage_model.{k}": v for k, v in vae.items()}
    sd.update({f"first_stage_model.vocoder.{k}": v for k, v in voc.items()})
    sd["scale_factor"] = torch.tensor(1.0)
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    assert convert_main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "80 mel bins" in err and "audioldm_48k" in err


def test_mixed_geometry_checkpoint_is_refused(tmp_path):
    """A 64-mel vocoder beside a 4-level VAE matches no geometry."""
    vae48, _ = tiny_original_states("audioldm_48k", 0)
    _, voc16 = tiny_original_states("audioldm_16k", 0)
    sd = {f"first_stage_model.{k}": v for k, v in vae48.items()}
    sd.update({f"first_stage_model.vocoder.{k}": v for k, v in voc16.items()})
    sd["scale_factor"] = torch.tensor(1.0)
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    with pytest.raises(ConversionError, match="not supported") as info:
        convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "o")
    assert "\n" not in str(info.value)


def test_unknown_vae_key_is_an_error(tmp_path):
    ckpt = write_tiny_original_ldm(tmp_path / "m.ckpt", "audioldm_16k")
    obj = torch.load(ckpt, weights_only=True)
    obj["state_dict"]["first_stage_model.encoder.extra.weight"] = torch.zeros(1)
    torch.save(obj, ckpt)
    with pytest.raises(ConversionError, match="unexpected VAE weight 'encoder.extra.weight'"):
        convert_checkpoint(ckpt, tmp_path / "o")
