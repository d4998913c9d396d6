"""Vocoder protocol, adapters (HiFi-GAN, Griffin-Lim, user modules from YAML + checkpoints) and check_vocoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from signals import formant_pulses, harmonic
from torch import nn

from vaefix_pl.core.frontend import HOP, LogMelFrontend, normalize_level, slaney_mel_basis
from vaefix_pl.core.probes import PROBE_NAMES, probe_signals
from vaefix_pl.vocoders.base import (
    VocoderAdapter,
    VocoderError,
    advertised_settings,
    as_vocoder,
    check_vocoder,
    vocode,
)
from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder
from vaefix_pl.vocoders.hifigan import load_hifigan
from vaefix_pl.vocoders.loading import (
    load_user_vocoder,
    load_vocoder,
    strip_state_prefix,
    vocoder_from_config,
)


def _true_mel(x: np.ndarray, framing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalised waveform (1, F*160) float64, log-mel (1, F, 64) float32)`` as the Reconstructor pairs them."""
    w = torch.from_numpy(np.asarray(x, dtype=np.float64))[None]
    w, _ = normalize_level(w)
    f = w.shape[1] // HOP
    w = w[:, : f * HOP]
    mel = LogMelFrontend(framing).double()(w)[:, 0, :f].float()
    return w, mel


# ------------------------------------------------------------------------------------------ fake vocoders
class RepeatVocoder(nn.Module):
    """A legitimate tiny vocoder: per-frame linear map to ``hop`` samples, ``(B, T, 64) -> (B, T*hop)``."""

    def __init__(self, hop: int = HOP, n_mels: int = 64, **attrs) -> None:
        super().__init__()
        self.proj = nn.Linear(n_mels, hop)
        for k, v in attrs.items():
            setattr(self, k, v)

    def forward(self, mel):
        return torch.tanh(self.proj(mel)).flatten(1)


class BCTVocoder(nn.Module):
    """Takes ``(B, 64, T)`` and returns ``(B, 1, T*160)``, like the original HiFi-GAN repository's Generator."""

    def __init__(self, n_mels: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_mels, HOP, kernel_size=3, padding=1)
        self.scale = scale

    def forward(self, mel_bct):
        y = self.conv(mel_bct)  # (B, 160, T)
        return (self.scale * torch.tanh(y)).transpose(1, 2).reshape(mel_bct.shape[0], 1, -1)


class Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class WithConfig(RepeatVocoder):
    def __init__(self, **cfg):
        super().__init__()
        self.config = Config(**cfg)


# ------------------------------------------------------------------------------------------ HiFi-GAN
def test_hifigan_adapter_is_the_speecht5_model_cut_to_t_times_160(tiny_model_dir):
    from transformers import SpeechT5HifiGan

    voc = load_hifigan(tiny_model_dir)
    raw = SpeechT5HifiGan.from_pretrained(str(tiny_model_dir / "vocoder")).eval()
    assert not any(p.requires_grad for p in voc.parameters()) and not voc.training
    check_vocoder(voc)  # strict: exactly (B, T*160)
    assert advertised_settings(voc) == {
        "sampling_rate": 16000, "hop_length": 160, "model_in_dim": 64, "normalize_before": False,
    }  # fmt: skip
    _, mel = _true_mel(formant_pulses(8000), "tacotron")
    with torch.no_grad():
        full = raw(mel)
        out = voc(mel)
    t = mel.shape[1]
    # strides 5/4/2/2/2, kernels 16/16/8/4/4, padding (k - s) // 2: ((5T + 1) * 4 * 2 * 2 * 2) samples
    assert full.shape == (1, (5 * t + 1) * 32) == (1, t * 160 + 32)
    assert out.shape == (1, t * 160) and torch.equal(out, full[:, : t * 160])
    # the raw model fails the strict check with a message naming the tail, passes the lenient one
    with pytest.raises(VocoderError, match=r"T\*160 \+32"):
        check_vocoder(raw)
    check_vocoder(raw, strict=False)
    assert torch.equal(vocode(raw, mel), out)
    trainable = load_hifigan(tiny_model_dir, trainable=True)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    # load_vocoder resolves the default, names and folders to the same model
    for spec in (None, "hifigan", str(tiny_model_dir), str(tiny_model_dir / "vocoder")):
        v = load_vocoder(spec, source=tiny_model_dir)
        with torch.no_grad():
            assert torch.equal(v(mel), out)


def test_hifigan_config_mismatch_is_a_clear_error(tmp_path, tiny_model_dir):
    import json
    import shutil

    folder = tmp_path / "voc"
    shutil.copytree(tiny_model_dir / "vocoder", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sampling_rate"] = 22050
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VocoderError, match="sampling_rate is 22050, expected 16000"):
        load_hifigan(folder)


# ------------------------------------------------------------------------------------------ check_vocoder
def test_check_vocoder_accepts_a_conforming_module_and_callable():
    check_vocoder(RepeatVocoder())
    lin = RepeatVocoder()
    check_vocoder(lambda mel: lin(mel))  # any callable


@pytest.mark.parametrize(
    ("vocoder", "message"),
    [
        (RepeatVocoder(hop=256), r"256 samples per frame .* its hop is 256"),
        (RepeatVocoder(sampling_rate=22050), r"sampling_rate=22050 Hz"),
        (RepeatVocoder(hop_length=256), r"hop of 256 samples"),
        (WithConfig(model_in_dim=80), r"80 input mel bins"),
        (WithConfig(upsample_rates=[8, 8, 2, 2]), r"hop of 256 samples"),
        (WithConfig(normalize_before=True), r"normalize_before=True"),
        (RepeatVocoder(n_mels=80), r"failed on a \(2, 24, 64\) log-mel probe"),
        (lambda mel: mel.new_zeros(mel.shape[0], 1, mel.shape[1] * HOP), r"\(B, 1, N\)"),
        (lambda mel: mel.new_zeros(mel.shape[0], mel.shape[1] * HOP + 80), r"T\*160 \+80"),
        (lambda mel: mel.new_zeros(mel.shape[0], mel.shape[1] * HOP, dtype=torch.long), r"int64"),
        (lambda mel: mel.new_full((mel.shape[0], mel.shape[1] * HOP), float("nan")), r"non-finite"),
        (lambda mel: mel.new_zeros(mel.shape[1] * HOP), r"expected \(2, 3840\)"),
        (lambda mel: "not a tensor", r"returned str"),
    ],
)
def test_check_vocoder_rejects(vocoder, message):
    with pytest.raises(VocoderError, match=message):
        check_vocoder(vocoder)


def test_check_vocoder_restores_train_mode():
    voc = RepeatVocoder().train()
    check_vocoder(voc)
    assert voc.training


def test_adapter_squeezes_transposes_and_trims():
    inner = BCTVocoder()
    with pytest.raises(VocoderError, match="failed on a"):
        check_vocoder(inner)  # (B, T, 64) into a (B, 64, T) model
    voc = as_vocoder(inner, input_layout="bct")
    check_vocoder(voc)
    mel = torch.randn(2, 10, 64)
    assert torch.equal(voc(mel), inner(mel.transpose(1, 2))[:, 0])
    assert isinstance(voc, VocoderAdapter) and list(voc.state_dict()) == [
        "inner.conv.weight",
        "inner.conv.bias",
    ]


# ------------------------------------------------------------------------------------------ Griffin-Lim
def test_griffin_lim_uses_the_frontend_basis_and_returns_t_times_160():
    gl = GriffinLimVocoder("tacotron")
    assert torch.equal(gl.inverse_mel.fb, slaney_mel_basis(torch.float32).T)
    assert gl.griffin_lim.power == 1.0 and gl.griffin_lim.hop_length == 160 and gl.griffin_lim.n_fft == 1024
    assert torch.equal(gl.griffin_lim.window, torch.hann_window(1024, periodic=True))
    check_vocoder(gl)
    check_vocoder(GriffinLimVocoder("hifigan"), framing="hifigan")
    # items are independent: an item alone equals the same item inside a batch
    _, m1 = _true_mel(harmonic(6400, f0=220.0), "tacotron")
    _, m2 = _true_mel(formant_pulses(6400, seed=3), "tacotron")
    both = gl(torch.cat([m1, m2]))
    assert both.shape == (2, 40 * 160)
    torch.testing.assert_close(both[1:], gl(m2), atol=1e-6, rtol=0)


def _envelope_lag(reference: torch.Tensor, estimate: torch.Tensor, max_lag: int = 240) -> int:
    """Lag (samples, positive = estimate late) maximising the correlation of 4 ms log-energy envelopes.

    Griffin-Lim does not reproduce phase, so the waveform cross-correlation is meaningless; the energy
    envelope of transients and noise bursts is phase-free and places them to within a few samples.
    """

    def env(x):
        e = torch.nn.functional.avg_pool1d(x.double()[:, None] ** 2, 64, 1, 32)[:, 0]
        e = torch.log(e + 1e-6)
        return (e - e.mean())[0]

    a, b = env(reference), env(estimate)
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n], b[:n]

    def corr(lag: int) -> float:
        if lag >= 0:
            return float((b[lag:] * a[: n - lag]).sum())
        return float((b[: n + lag] * a[-lag:]).sum())

    return max(range(-max_lag, max_lag + 1), key=corr)


@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
def test_griffin_lim_output_lies_on_the_input_timeline(framing):
    probes = probe_signals(seconds=2.0)
    other = "hifigan" if framing == "tacotron" else "tacotron"
    for name in ("transients", "noise_bursts"):
        ref, mel = _true_mel(probes[name], framing)
        y = GriffinLimVocoder(framing)(mel)
        assert y.shape == ref.shape
        assert abs(_envelope_lag(ref, y)) <= 8, name
        # the check can fail: treating the mel as the other framing's puts the output half a hop off
        wrong = GriffinLimVocoder(other)(mel)
        expected = 80 if framing == "tacotron" else -80  # hifigan output = tacotron output delayed by 80
        assert abs(_envelope_lag(ref, wrong) - expected) <= 12, name


def test_griffin_lim_floor_on_the_probe_set(capsys):
    """Weight-free floor: Griffin-Lim on the true mel of the 4 s probe set, scored like a reconstruction."""
    from vaefix_pl.metrics import compute_metrics, perceptual_scores

    names = ["mel_distance", "mrstft_distance", "lsd", "snr", "si_sdr", "lag", "clicks_added_per_s"]
    probes = probe_signals(seconds=4.0)
    rows = {}
    for framing in ("tacotron", "hifigan"):
        gl = GriffinLimVocoder(framing)
        refs, mels = zip(*(_true_mel(probes[n], framing) for n in PROBE_NAMES))
        ref = torch.cat(refs).float()
        est = gl(torch.cat(mels))
        scores = compute_metrics(ref, est, None, names)
        noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)) * ref.std(1, keepdim=True)
        noise_scores = compute_metrics(ref, noise, None, ["mel_distance"])
        for i, n in enumerate(PROBE_NAMES):
            row = {m: float(v[i]) for m, v in scores.items()}
            row.update(
                {
                    k: v
                    for k, v in perceptual_scores(
                        ref[i].numpy(), est[i].numpy(), 16000, ["pesq", "stoi"]
                    ).items()
                }
            )
            rows[(framing, n)] = row
            assert all(math.isfinite(row[m]) for m in names), (framing, n, row)
            # better than a level-matched noise estimate with the wrong spectrum
            assert row["mel_distance"] < float(noise_scores["mel_distance"][i]), (framing, n)
    with capsys.disabled():
        print("\nGriffin-Lim floor (true mel, 4 s probes, 32 iterations):")
        cols = [*names, "pesq", "stoi"]
        print(f"{'framing':<9}{'probe':<14}" + "".join(f"{c[:12]:>13}" for c in cols))
        for (framing, n), row in rows.items():
            print(f"{framing:<9}{n:<14}" + "".join(f"{row[c]:>13.4g}" for c in cols))
        for framing in ("tacotron", "hifigan"):
            means = {c: np.nanmean([rows[(framing, n)][c] for n in PROBE_NAMES]) for c in cols}
            print(f"{framing:<9}{'MEAN':<14}" + "".join(f"{means[c]:>13.4g}" for c in cols))


# ------------------------------------------------------------------------------------------ user modules
HIFIGAN_YAML = """
class_path: transformers.SpeechT5HifiGan
init_args:
  config:
    class_path: transformers.SpeechT5HifiGanConfig
    init_args:
      model_in_dim: 64
      sampling_rate: 16000
      upsample_initial_channel: 32
      upsample_rates: [5, 4, 2, 2, 2]
      upsample_kernel_sizes: [16, 16, 8, 4, 4]
      resblock_kernel_sizes: [3]
      resblock_dilation_sizes: [[1, 3]]
      normalize_before: false
ckpt_path: {ckpt}
"""


@pytest.mark.parametrize("kind", ["lightning", "plain", "safetensors"])
def test_user_vocoder_from_yaml_and_checkpoint(tmp_path, tiny_model_dir, kind):
    from safetensors.torch import save_file

    reference = load_hifigan(tiny_model_dir)
    weights = {k: v.clone() for k, v in reference.inner.state_dict().items()}
    if kind == "lightning":  # a LightningModule that held the adapter as `self.vocoder`
        ckpt = tmp_path / "epoch=3.ckpt"
        state = {f"vocoder.inner.{k}": v for k, v in weights.items()}
        state["frontend_scale"] = torch.ones(1)  # another module's tensor: ignored by the prefix strip
        torch.save({"epoch": 3, "global_step": 120, "state_dict": state, "optimizer_states": []}, ckpt)
    elif kind == "plain":
        ckpt = tmp_path / "generator.pt"
        torch.save({f"module._orig_mod.{k}": v for k, v in weights.items()}, ckpt)  # DDP + compile prefixes
    else:
        ckpt = tmp_path / "vocoder.safetensors"
        save_file(weights, str(ckpt))
    cfg = tmp_path / "vocoder.yaml"
    cfg.write_text(HIFIGAN_YAML.format(ckpt=ckpt.name))  # relative to the YAML's folder
    voc = load_vocoder(str(cfg))
    _, mel = _true_mel(formant_pulses(6400), "tacotron")
    with torch.no_grad():
        assert torch.equal(voc(mel), reference(mel))
    assert not any(p.requires_grad for p in voc.parameters())


def test_user_vocoder_bct_layout_with_explicit_prefix(tmp_path):
    torch.manual_seed(0)
    trained = BCTVocoder(scale=0.5)
    ckpt = tmp_path / "g_00010000"
    torch.save({"generator": {f"gen.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    voc = load_user_vocoder(
        f"{__name__}.BCTVocoder", {"scale": 0.5}, ckpt, key="generator", prefix="gen.", input_layout="bct"
    )
    mel = torch.randn(3, 12, 64)
    with torch.no_grad():
        assert torch.equal(voc(mel), trained(mel.transpose(1, 2))[:, 0])
    # the same from a mapping; a missing key or a wrong class path is a clear error
    same = vocoder_from_config(
        {"class_path": f"{__name__}.BCTVocoder", "init_args": {"scale": 0.5}, "ckpt_path": str(ckpt),
         "key": "generator", "input_layout": "bct"}
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(same(mel), voc(mel))
    with pytest.raises(VocoderError, match="has no key 'g'"):
        load_user_vocoder(f"{__name__}.BCTVocoder", None, ckpt, key="g", input_layout="bct")
    with pytest.raises(VocoderError, match="cannot import"):
        load_user_vocoder("nonexistent_pkg.Vocoder")
    with pytest.raises(VocoderError, match="does not exist"):
        load_user_vocoder(f"{__name__}.BCTVocoder", None, tmp_path / "missing.ckpt")


def test_strip_state_prefix_finds_the_longest_common_match():
    model_keys = ["conv.weight", "conv.bias"]
    state = {"model.vocoder.conv.weight": 1, "model.vocoder.conv.bias": 2, "model.other.weight": 3}
    assert strip_state_prefix(state, model_keys) == {"conv.weight": 1, "conv.bias": 2}
    assert strip_state_prefix({"conv.weight": 1, "conv.bias": 2}, model_keys) == {
        "conv.weight": 1,
        "conv.bias": 2,
    }
    assert strip_state_prefix(state, model_keys, prefix="model.other.") == {"weight": 3}
