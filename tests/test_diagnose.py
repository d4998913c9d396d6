"""Stage-wise decomposition, numeric health warnings and the mel mistake detector.

Every stage is checked against an independent computation (the vocoder / VAE called directly, an L1 by
hand, the chain applied by hand); every mistake is made on purpose with librosa (an independent front-end)
from realistic signals, and the verdict is asserted.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch
from signals import chirp, formant_pulses, harmonic

from vaefix_pl.cli.diagnose import diagnose_main, diagnose_mel_main
from vaefix_pl.core.frontend import LOG_MEL_FLOOR, LogMelFrontend
from vaefix_pl.core.health import repair_mel
from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.diagnose.decompose import decompose, format_verdicts, masked_mel_error
from vaefix_pl.diagnose.health import health_warnings, stage_health
from vaefix_pl.diagnose.mel import diagnose_mel
from vaefix_pl.diagnose.mistakes import MISTAKES, load_mel
from vaefix_pl.metrics import compute_metrics
from vaefix_pl.repair.chain import PostProcessChain

SR = 16000
METRICS = ["mel_distance", "snr", "clicks_added_per_s"]


@pytest.fixture(scope="module")
def rec(tiny_model_dir) -> Reconstructor:
    return Reconstructor.from_pretrained(str(tiny_model_dir), pad_frames_to=4)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A harmonic tone (0.5 s) and speech-like formant pulses (0.3 s, zero-padded), float32."""
    a = harmonic(8000, seed=1)
    b = formant_pulses(4800, seed=2)
    x = torch.zeros(2, 8000)
    x[0] = torch.from_numpy(a).float()
    x[1, :4800] = torch.from_numpy(b).float()
    return x, torch.tensor([8000, 4800])


@pytest.fixture(scope="module")
def decomposition(rec, batch):
    x, lengths = batch
    return decompose(
        rec, x, lengths, chain=PostProcessChain.seed_final(), metrics=METRICS, ids=["tone", "speech"]
    )


# ------------------------------------------------------------------------------------------ decomposition
def test_stage_a_is_the_vocoder_on_the_true_mel(rec, batch, decomposition):
    x, lengths = batch
    out = decomposition.output
    for i in range(2):
        n = int(lengths[i])
        canon = int(out.canonical_frames[i])
        with torch.inference_mode():
            direct = rec.vocoder(out.mel[i : i + 1, 0, :canon])[0, :n].double() / out.gain[i]
        torch.testing.assert_close(
            decomposition.audio["ceiling"][i, :n].double(), direct, atol=1e-6, rtol=1e-5
        )
        assert torch.all(decomposition.audio["ceiling"][i, n:] == 0)
    # and it is what rec.vocode gives on the true mel, scored like any estimate
    torch.testing.assert_close(decomposition.audio["ceiling"], rec.vocode(out.mel, lengths, out.gain))
    expected = compute_metrics(out.reference, decomposition.audio["ceiling"], lengths, METRICS)
    for k in METRICS:
        torch.testing.assert_close(decomposition.metrics["vocoder_ceiling"][k], expected[k].double())
    assert torch.all(decomposition.metrics["vocoder_ceiling"]["input_mel_l1"] == 0)


def test_stage_b_vae_round_trip_l1_by_hand(rec, decomposition):
    out = decomposition.output
    mel, mel_hat = out.mel.double().numpy(), out.mel_hat.double().numpy()
    for i in range(2):
        f = int(out.frames[i])
        by_hand = np.abs(mel_hat[i, 0, :f] - mel[i, 0, :f]).mean()
        bias = (mel_hat[i, 0, :f] - mel[i, 0, :f]).mean()
        assert decomposition.metrics["vae_roundtrip"]["mel_l1"][i].item() == pytest.approx(by_hand, rel=1e-12)
        assert decomposition.metrics["vae_roundtrip"]["mel_bias"][i].item() == pytest.approx(
            bias, rel=1e-9, abs=1e-12
        )
        # padding frames do not count: the L1 over every canonical frame differs
        canon = int(out.canonical_frames[i])
        if canon > f:
            assert np.abs(mel_hat[i, 0, :canon] - mel[i, 0, :canon]).mean() != pytest.approx(by_hand)
        # and the decoded mel is the VAE round trip of the true mel, item by item
        with torch.inference_mode():
            again = repair_mel(rec.decode(rec.encode(out.mel[i : i + 1, :, :canon])))
        torch.testing.assert_close(again[0, :, :canon], out.mel_hat[i, :, :canon], atol=1e-5, rtol=1e-5)
    # the pipeline's vocoder input is that decoded mel
    torch.testing.assert_close(
        decomposition.metrics["pipeline"]["input_mel_l1"], decomposition.metrics["vae_roundtrip"]["mel_l1"]
    )


def test_stage_c_is_the_full_pipeline(rec, batch, decomposition):
    x, lengths = batch
    again = rec(x, lengths)
    torch.testing.assert_close(decomposition.audio["recon"], again.waveform)
    torch.testing.assert_close(decomposition.audio["original"], again.reference)
    expected = compute_metrics(again.reference, again.waveform, lengths, METRICS)
    for k in METRICS:
        torch.testing.assert_close(decomposition.metrics["pipeline"][k], expected[k].double())


def test_stage_d_applies_the_repair_chain_by_hand(rec, batch, decomposition):
    x, lengths = batch
    chain = PostProcessChain.seed_final()
    out = decomposition.output
    mel = chain.process_mel(out.mel_hat, out.frames)
    assert not torch.equal(mel, out.mel_hat)  # min-max to (-8, 2) changes a healthy mel
    expected = chain(rec.vocode(mel, lengths, out.gain), lengths)
    torch.testing.assert_close(decomposition.audio["post"], expected)
    for i in range(2):
        f = int(out.frames[i])
        by_hand = (mel[i, 0, :f].double() - out.mel[i, 0, :f].double()).abs().mean().item()
        assert decomposition.metrics["repaired"]["input_mel_l1"][i].item() == pytest.approx(
            by_hand, rel=1e-12
        )
        step = (mel[i, 0, :f].double() - out.mel_hat[i, 0, :f].double()).abs().mean().item()
        assert decomposition.metrics["repaired"]["mel_step_l1"][i].item() == pytest.approx(step, rel=1e-12)
        # min-max to (-8, 2) moves a healthy decoded mel: said, with the mode that did it
        moved = [w for w in decomposition.warnings[i] if "mel step (mel_mode='minmax')" in w.message]
        assert moved and f"{step:.2f} nats" in moved[0].message
    scores = compute_metrics(out.reference, expected, lengths, METRICS)
    torch.testing.assert_close(
        decomposition.metrics["repaired"]["mel_distance"], scores["mel_distance"].double()
    )


def test_without_a_chain_there_is_no_stage_d(rec, batch):
    x, lengths = batch
    d = decompose(rec, x, lengths, metrics=["mel_distance"])
    assert d.stages == ["vocoder_ceiling", "vae_roundtrip", "pipeline"]
    assert "post" not in d.audio
    # the default chain's "guard" step leaves a healthy mel alone: the vocoder is not re-run
    guard = PostProcessChain(outliers=False, fade=False, bandpass=False, compress=True)
    d2 = decompose(rec, x, lengths, chain=guard, metrics=["mel_distance"])
    torch.testing.assert_close(d2.audio["post"], guard(d2.audio["recon"], lengths))


def test_rows_and_verdicts_follow_the_writer_convention(decomposition):
    rows = decomposition.rows()
    assert [r["id"] for r in rows] == ["tone", "speech"]
    for r, i in zip(rows, range(2)):
        assert r["mel_distance"] == pytest.approx(decomposition.value("pipeline", "mel_distance", i))
        assert r["post_mel_distance"] == pytest.approx(decomposition.value("repaired", "mel_distance", i))
        assert r["ceiling_mel_distance"] == pytest.approx(
            decomposition.value("vocoder_ceiling", "mel_distance", i)
        )
        assert r["vae_mel_l1"] == pytest.approx(decomposition.value("vae_roundtrip", "mel_l1", i))
        assert "health_mel_hat_nonfinite" in r and "health_faults" in r
    text = format_verdicts(decomposition, 0)
    for title in (
        "(a) vocoder on the true mel",
        "(b) VAE round trip",
        "(c) full pipeline",
        "(d) full pipeline",
    ):
        assert title in text
    v = decomposition.verdict(0)
    a = decomposition.value("vocoder_ceiling", "mel_distance", 0)
    c = decomposition.value("pipeline", "mel_distance", 0)
    assert f"vocoder ceiling {a:.3f} + VAE {c - a:+.3f}" in v["overall"]


def test_console_verdicts_use_the_reports_vae_threshold_and_print_each_warning_once(decomposition):
    """The console's stage (b) status agrees with report.html's badge (one threshold, in nats), and a
    warning shown on its own ``!`` line is not repeated at the end of the stage line."""
    import dataclasses

    from vaefix_pl.diagnose.health import HealthWarning
    from vaefix_pl.diagnose.stages import VAE_L1_OK
    from vaefix_pl.report import html

    assert html.VAE_L1_OK == VAE_L1_OK
    for i in range(2):
        l1 = decomposition.value("vae_roundtrip", "mel_l1", i)
        assert l1 > VAE_L1_OK  # tiny random models: far from a trained VAE
        line = next(x for x in format_verdicts(decomposition, i).splitlines() if "(b) VAE round trip" in x)
        assert line.split()[6] == "WARN", line
        assert f"{l1:.3f} nats" in line
    good = {**decomposition.metrics["vae_roundtrip"], "mel_l1": torch.tensor([0.2, 0.5], dtype=torch.float64)}
    d_good = dataclasses.replace(decomposition, metrics={**decomposition.metrics, "vae_roundtrip": good})
    line = next(x for x in format_verdicts(d_good, 0).splitlines() if "(b) VAE round trip" in x)
    assert line.split()[6] == "ok", line
    warning = HealthWarning("output", "warn", "0.72 added clicks per second that the input does not explain")
    d_warn = dataclasses.replace(decomposition, warnings=[[warning], []])
    text = format_verdicts(d_warn, 0)
    assert text.count(warning.message) == 1, text
    assert f"! {warning}" in text


def test_masked_mel_error_by_hand():
    a = torch.zeros(2, 1, 8, 3)
    b = torch.zeros(2, 1, 8, 3)
    a[0, 0, :2] = 1.0  # item 0: 2 valid frames of error 1, rest of its 4 valid frames 0
    a[0, 0, 6:] = 100.0  # padding, must not count
    a[1, 0, 0, 0] = -3.0
    out = masked_mel_error(a, b, torch.tensor([4, 8]))
    assert out["l1"].tolist() == pytest.approx([0.5, 3.0 / 24])
    assert out["bias"].tolist() == pytest.approx([0.5, -3.0 / 24])
    assert out["max_abs"].tolist() == pytest.approx([1.0, 3.0])


# ------------------------------------------------------------------------------------------ health
def _messages(warns) -> str:
    return " | ".join(str(w) for w in warns)


def test_injected_nan_in_the_decoder_is_a_fault_naming_float16(rec, batch, monkeypatch):
    x, lengths = batch
    original = rec.decode

    def broken(latent):
        mel = original(latent)
        mel[:, :, :5, :] = float("nan")
        mel[:, :, 5, :3] = float("inf")
        return mel

    monkeypatch.setattr(rec, "decode", broken)
    d = decompose(rec, x, lengths, metrics=[])
    for i in range(2):
        h = d.health["decoded_mel"][i]
        assert h["nan"] == 5 * 64 and h["posinf"] == 3 and h["nonfinite"] == 5 * 64 + 3
        faults = [w for w in d.warnings[i] if w.severity == "fault" and w.stage == "decoded_mel"]
        assert faults, _messages(d.warnings[i])
        assert "float16" in faults[0].message and "float32" in faults[0].message
        # the repaired vocoder input is finite again
        assert d.health["vocoder_input"][i]["nonfinite"] == 0
        assert "numeric fault at decoded_mel" in d.verdict(i)["overall"]


def test_constant_decoded_mel_and_the_seeds_minus_four_symptom(rec, batch, monkeypatch):
    x, lengths = batch
    monkeypatch.setattr(rec, "decode", lambda z: torch.full((z.shape[0], 1, 4 * z.shape[2], 64), -4.0))
    d = decompose(rec, x, lengths, chain=PostProcessChain.seed_final(), metrics=[])
    for i in range(2):
        assert d.health["vocoder_input"][i]["constant"]
        assert d.health["vocoder_input"][i]["min"] == d.health["vocoder_input"][i]["max"] == -4.0
        msgs = _messages(d.warnings[i])
        assert "[-4.000, -4.000]" in msgs
        # min-max of a flat mel to (-8, 2) is the constant -3: the chain's own doing, and said so
        chain_faults = [
            w for w in d.warnings[i] if w.stage == "repaired_vocoder_input" and w.severity == "fault"
        ]
        assert chain_faults and "mel_mode='minmax'" in chain_faults[0].message
        assert "[-3.000, -3.000]" in chain_faults[0].message


def test_stage_health_counts_and_float16_warning():
    x = torch.full((2, 10), -5.0, dtype=torch.float16)
    x[0, 0] = float("inf")
    x[0, 1] = float("-inf")
    x[1, 2] = float("nan")
    x[1, 3:] = torch.linspace(-11, 1, 7).half()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, -1] = False
    h = stage_health(x, mask, value_range=(LOG_MEL_FLOOR, 2.81))
    assert h[0]["dtype"] == "float16"
    assert (h[0]["posinf"], h[0]["neginf"], h[0]["nan"], h[0]["nonfinite"]) == (1, 1, 0, 2)
    assert h[0]["constant"] and h[0]["std"] == 0.0
    assert (h[1]["nan"], h[1]["nonfinite"]) == (1, 1)
    valid = np.r_[[-5.0, -5.0], np.linspace(-11, 1, 7)[:-1]].astype(np.float16).astype(np.float64)
    assert h[1]["mean"] == pytest.approx(valid.mean()) and h[1]["std"] == pytest.approx(valid.std())
    msgs = _messages(health_warnings("latent", h[0]))
    assert "fault" in msgs and "float32" in msgs and "float64" in msgs  # overflow cause + float16 statistics


def test_out_of_range_and_saturation_warnings():
    mel = torch.full((1, 1, 8, 64), -5.0)
    mel[0, 0, :4] = 9.0  # half the values far above the trained ceiling (2.81)
    h = stage_health(mel, torch.ones_like(mel, dtype=torch.bool), value_range=(LOG_MEL_FLOOR, 2.81))[0]
    assert h["frac_out_of_range"] == pytest.approx(0.5)
    front = health_warnings("frontend_mel", h)
    assert front and "diagnose-mel" in front[0].message and "50.0%" in front[0].message
    chain = health_warnings("repaired_vocoder_input", h, mel_mode="minmax")
    assert "renormalised" in chain[0].message
    out = health_warnings("output", {"nonfinite": 0, "peak": 1.0, "dtype": "float32"})
    assert out and "saturates" in out[0].message
    assert health_warnings("output", {"nonfinite": 0, "peak": 0.5, "dtype": "float32"}) == []


# ------------------------------------------------------------------------------------------ mistake detector
def _norm(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return 0.5 * x / np.abs(x).max()


def _librosa_mel(x, sr=SR, hop=160, n_mels=64, power=1.0) -> np.ndarray:
    """``(T, n_mels)`` mel by librosa (an independent front-end), reflect-padded like ours."""
    return librosa.feature.melspectrogram(
        y=x,
        sr=sr,
        n_fft=1024,
        hop_length=hop,
        win_length=1024,
        n_mels=n_mels,
        fmax=8000,
        power=power,
        pad_mode="reflect",
    ).T


def _ln(m: np.ndarray) -> np.ndarray:
    return np.log(np.clip(m, 1e-5, None))


def make_mistake(kind: str, x: np.ndarray) -> np.ndarray | torch.Tensor:
    """A mel made with the mistake ``kind`` on purpose from the (level-normalised) signal ``x``."""
    if kind == "ok":
        return _ln(_librosa_mel(x))
    if kind == "transposed":
        return _ln(_librosa_mel(x)).T
    if kind == "power":  # librosa's default power=2.0
        return _ln(_librosa_mel(x, power=2.0))
    if kind == "log10":
        return np.log10(np.clip(_librosa_mel(x), 1e-5, None))
    if kind == "db":  # librosa.power_to_db of the default power mel
        return librosa.power_to_db(_librosa_mel(x, power=2.0))
    if kind == "missing_log":
        return _librosa_mel(x)
    if kind == "wrong_hop":
        return _ln(_librosa_mel(x, hop=256))
    if kind == "wrong_sample_rate":  # librosa.load's default 22050 Hz, hop 160 at that rate
        return _ln(_librosa_mel(librosa.resample(x, orig_sr=SR, target_sr=22050), sr=22050))
    if kind == "wrong_n_mels":  # the TTS habit
        return _ln(_librosa_mel(x, n_mels=80))
    if kind == "float16_overflow":  # int16-scale samples through a float16 magnitude -> inf -> inf * 0 = NaN
        fe = LogMelFrontend()
        mag = fe.magnitude(torch.from_numpy(np.round(x * 2 * 32767)).float()[None]).half()
        return torch.log(torch.clamp(torch.matmul(fe.mel_basis.half(), mag), min=1e-5)).transpose(1, 2)[0]
    raise ValueError(kind)


SIGNALS = {
    "harmonic": lambda: _norm(harmonic(24000, f0=220.0, seed=3)),
    "chirp": lambda: _norm(chirp(24000)),
    "formants": lambda: _norm(formant_pulses(24000, seed=4)),
}
WITH_AUDIO = [
    "transposed",
    "power",
    "log10",
    "db",
    "missing_log",
    "wrong_hop",
    "wrong_sample_rate",
    "wrong_n_mels",
    "float16_overflow",
]


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_a_correct_mel_is_ok(signal):
    x = SIGNALS[signal]()
    verdict = diagnose_mel(make_mistake("ok", x), x)
    assert verdict.ok and verdict.mistake == "ok", str(verdict)
    assert verdict.fit["slope"] == pytest.approx(1.0, abs=0.01) and verdict.fit["r2"] > 0.99
    # our own front-end's mel, as a (1, 1, T, 64) tensor, is ok too
    ours = LogMelFrontend()(torch.from_numpy(x).float()[None])
    assert diagnose_mel(ours, x).ok


@pytest.mark.parametrize("signal", list(SIGNALS))
@pytest.mark.parametrize("kind", WITH_AUDIO)
def test_each_mistake_is_named_with_the_audio(kind, signal):
    x = SIGNALS[signal]()
    verdict = diagnose_mel(make_mistake(kind, x), x)
    assert verdict.mistake == kind, str(verdict)
    assert verdict.findings[0].fix == MISTAKES[kind]
    assert "front-end" in verdict.checks


# Statistics alone decide these (the floor a clamp leaves, the shape, the sign, non-finite values).
@pytest.mark.parametrize("signal", ["harmonic", "chirp"])
@pytest.mark.parametrize(
    "kind", ["transposed", "power", "log10", "db", "missing_log", "wrong_n_mels", "float16_overflow"]
)
def test_each_mistake_is_named_from_statistics_alone(kind, signal):
    x = SIGNALS[signal]()
    verdict = diagnose_mel(make_mistake(kind, x))
    assert verdict.mistake == kind, str(verdict)


def test_frame_rate_mistakes_need_the_audio():
    x = SIGNALS["harmonic"]()
    verdict = diagnose_mel(make_mistake("wrong_hop", x))
    assert verdict.ok and any("cannot be checked" in c for c in verdict.checks)
    with_audio = diagnose_mel(make_mistake("wrong_hop", x), x)
    assert "hop 256" in with_audio.findings[0].evidence
    sr = diagnose_mel(make_mistake("wrong_sample_rate", x), x)
    assert "22050 Hz" in sr.findings[0].evidence


@pytest.mark.parametrize("kind", ["transposed", "log10", "missing_log", "ok"])
def test_the_corrected_mel_undoes_invertible_mistakes(kind):
    x = SIGNALS["chirp"]()
    ok = make_mistake("ok", x)
    verdict = diagnose_mel(make_mistake(kind, x), x)
    assert verdict.corrected is not None and verdict.corrected.shape == (1, 1) + ok.shape
    np.testing.assert_allclose(verdict.corrected[0, 0].double().numpy(), ok, atol=1e-4)


@pytest.mark.parametrize("kind", ["power", "db", "wrong_hop", "wrong_n_mels"])
def test_no_corrected_mel_when_it_must_be_recomputed(kind):
    # the mel of the power is not the square of the mel of the magnitude: halving is not a fix
    x = SIGNALS["chirp"]()
    assert diagnose_mel(make_mistake(kind, x), x).corrected is None
    if kind != "wrong_hop":  # a frame-rate mistake is invisible without the audio
        assert diagnose_mel(make_mistake(kind, x)).corrected is None


def test_float16_statistics_overflow_is_the_seeds_std_inf():
    x = _norm(harmonic(32000, seed=5))
    mel16 = torch.from_numpy(make_mistake("ok", x)).half()  # finite values, 201 x 64 of about -6
    with np.errstate(over="ignore"):
        assert np.isinf(np.std(mel16.numpy()))  # the symptom itself
    verdict = diagnose_mel(mel16)
    assert verdict.mistake == "float16_overflow" and "std=inf" in verdict.findings[0].evidence
    assert math.isfinite(verdict.stats["std"])  # ours are float64


def test_constant_and_missing_floor():
    const = diagnose_mel(np.full((300, 64), -4.0, dtype=np.float32))
    assert const.mistake == "constant" and "-4.000" in const.findings[0].evidence
    x = np.r_[np.zeros(4000), SIGNALS["formants"]()[:8000], np.zeros(4000)]
    with np.errstate(divide="ignore"):
        unclamped = np.log(_librosa_mel(x))  # digital silence: log(0) = -inf
    assert np.isneginf(unclamped).any()
    verdict = diagnose_mel(unclamped)
    assert verdict.mistake == "missing_floor"


def test_batched_and_channel_axes_are_squeezed():
    x = SIGNALS["harmonic"]()
    mel = torch.from_numpy(make_mistake("transposed", x))[None, None].repeat(3, 1, 1, 1)  # (3, 1, 64, T)
    verdict = diagnose_mel(mel, x)
    assert verdict.mistake == "transposed"
    assert any("item 0" in c for c in verdict.checks)


def test_load_mel_and_the_cli(tmp_path, capsys):
    import soundfile as sf

    x = SIGNALS["formants"]()
    sf.write(tmp_path / "clip.wav", x.astype(np.float32), SR, subtype="FLOAT")
    np.save(tmp_path / "bad.npy", make_mistake("transposed", x).astype(np.float32))
    torch.save(
        {"mel": torch.from_numpy(make_mistake("ok", x)), "other": torch.zeros(3)}, tmp_path / "good.pt"
    )
    assert load_mel(tmp_path / "bad.npy").shape[0] == 64
    assert load_mel(tmp_path / "good.pt").shape[1] == 64
    assert diagnose_mel_main([str(tmp_path / "bad.npy"), "--audio", str(tmp_path / "clip.wav")]) == 1
    assert "verdict: transposed" in capsys.readouterr().out
    fixed = tmp_path / "fixed.npy"
    rc = diagnose_mel_main([str(tmp_path / "bad.npy"), "--save-corrected", str(fixed)])
    assert rc == 1 and np.load(fixed).shape == (1, 1, make_mistake("ok", x).shape[0], 64)
    assert diagnose_mel_main([str(tmp_path / "good.pt"), "--audio", str(tmp_path / "clip.wav")]) == 0
    assert "verdict: OK" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ command line
def test_diagnose_cli_on_the_probe_set(tiny_model_dir, tmp_path, capsys):
    import json

    from vaefix_pl.core.probes import PROBE_NAMES

    out = tmp_path / "diag"
    argv = ["--model", str(tiny_model_dir), "--out", str(out), "--seconds", "0.5", "--pad-frames-to", "4"]
    assert diagnose_main(argv + ["--repair", "--embed-audio", "2"]) == 0
    text = capsys.readouterr().out
    for name in PROBE_NAMES:
        assert f"== {name} (0.50 s) ==" in text
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
        for tag in ("original", "ceiling", "recon", "post"):
            assert (out / f"{name}.{tag}.wav").is_file()
    assert text.count("(a) vocoder on the true mel") == len(PROBE_NAMES)
    assert text.count("verdict: mel distance") == len(PROBE_NAMES)
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    assert [d["id"] for d in diagnosis["items"]] == list(PROBE_NAMES)
    assert set(diagnosis["items"][0]["stages"]) == {
        "vocoder_ceiling",
        "vae_roundtrip",
        "pipeline",
        "repaired",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == len(PROBE_NAMES) and summary["settings"]["full_size_models"] is False
    assert "ceiling_mel_distance" in summary["metrics"] and "vae_mel_l1" in summary["metrics"]
    html = (out / "report.html").read_text()
    assert html.count("data:audio/wav;base64,") == 2 * 4  # two clips embedded, four players each
    assert "TINY" in text.upper() and "Tiny random-weight models" in html


def test_diagnose_cli_on_files_keeps_going_past_a_bad_one(tiny_model_dir, tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "voice.wav", SIGNALS["formants"]()[:8000].astype(np.float32), SR)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    out = tmp_path / "diag"
    argv = [str(tmp_path / "voice.wav"), str(tmp_path / "broken.wav"), "--model", str(tiny_model_dir)]
    assert diagnose_main(argv + ["--out", str(out), "--pad-frames-to", "4", "--embed-audio", "0"]) == 0
    text = capsys.readouterr().out
    assert "== voice (0.50 s) ==" in text and "FAILED broken" in text
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("broken,") and "cannot" in rows[1]
    html = (out / "report.html").read_text()
    assert "Failed" in html and "broken" in html and "voice.recon.wav" in html  # linked, not embedded
