"""Figures and report.html: contents checked against hand-built run folders; rendering checked in Chromium."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import math
import re
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from signals import chirp, formant_pulses, harmonic

from vaefix_pl.cli.report import report_main
from vaefix_pl.core.frontend import LogMelFrontend
from vaefix_pl.report.figures import clip_figure, display_log_mels, figure_png, mel_band_centres_hz
from vaefix_pl.report.html import read_metrics_csv, wav_base64, write_report

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


def _screenshot_module():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", ROOT / "scripts" / "screenshot_report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ figures
def test_mel_band_centres_match_librosa():
    import librosa

    expected = librosa.mel_frequencies(n_mels=66, fmin=0.0, fmax=8000.0, htk=False)[1:-1]
    np.testing.assert_allclose(mel_band_centres_hz(), expected, rtol=1e-9)


def test_display_log_mels_share_the_originals_gain():
    x = harmonic(8000, seed=2)
    mo, mr = display_log_mels(x, 2.0 * x)  # twice as loud: ln 2 above everywhere the floor does not bite
    ours = LogMelFrontend().double()(
        torch.from_numpy(0.5 * (x - x.mean()) / np.abs(x - x.mean()).max())[None]
    )
    np.testing.assert_allclose(mo, ours[0, 0].numpy(), atol=1e-6)  # normalize_level adds eps 1e-8
    above = mo > -9.0
    np.testing.assert_allclose((mr - mo)[above], math.log(2.0), atol=1e-6)


def test_clip_figure_panels_labels_and_clicks():
    x = formant_pulses(16000, seed=1)
    y = 0.8 * x
    y[4000] += 0.4
    y[12000] -= 0.4
    fig = clip_figure(x, y, post=0.5 * x, clicks=[4000, 12000], title="speech")
    mel_axes = [ax for ax in fig.axes if ax.get_ylabel() == "frequency (Hz)"]
    assert len(mel_axes) == 3
    cmaps = [ax.images[0].get_cmap().name for ax in mel_axes]
    assert cmaps == ["viridis", "viridis", "RdBu_r"]
    # the difference panel shows reconstruction - original, on a symmetric scale
    mo, mr = display_log_mels(x, y)
    np.testing.assert_allclose(mel_axes[2].images[0].get_array(), (mr - mo).T)
    lo, hi = mel_axes[2].images[0].get_clim()
    assert lo == -hi
    # x axis in seconds over the clip; y ticks in Hz at the bands' centres
    assert mel_axes[0].images[0].get_extent()[1] == pytest.approx(mo.shape[0] * 160 / SR)
    assert [t.get_text() for t in mel_axes[0].get_yticklabels()] == ["200", "500", "1k", "2k", "4k", "7k"]
    # one waveform panel each (not drawn over each other), stacked below the mels, same y scale
    wave = [ax for ax in fig.axes if ax.get_ylabel() == "amplitude"]
    titles = [ax.get_title(loc="left") for ax in wave]
    assert [t.split(":")[0] for t in titles] == ["original", "reconstruction", "repaired (repair chain)"]
    assert wave[-1].get_xlabel() == "time (s)" and "2 added click(s)" in titles[1]
    assert len({ax.get_ylim() for ax in wave}) == 1
    assert wave[0].get_ylim()[1] == pytest.approx(1.15 * max(np.abs(x).max(), np.abs(y).max()))
    # the envelope keeps every peak: the drawn band of the reconstruction reaches its extremes
    band = wave[1].collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(y.max()) and band.min() == pytest.approx(y.min())
    click_lines = [line.get_xdata()[0] for line in wave[1].lines]
    np.testing.assert_allclose(click_lines, [4000 / SR, 12000 / SR])
    assert fig._suptitle is not None and fig._suptitle.get_text() == "speech"
    png = figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_wav_base64_is_16_bit_pcm():
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(1600) / SR)
    x[0] = 1.7  # clipped, not wrapped
    data, sr = sf.read(io.BytesIO(base64.b64decode(wav_base64(x))), dtype="int16")
    assert sr == SR and data.dtype == np.int16 and data[0] == 32767
    np.testing.assert_allclose(data[1:] / 32768.0, x[1:], atol=1.5 / 32768)
    info = sf.info(io.BytesIO(base64.b64decode(wav_base64(x))))
    assert info.subtype == "PCM_16"


# ------------------------------------------------------------------------------------------ report.html
class _Tables(HTMLParser):
    """Collects the rows of the table inside ``#metrics`` and the audio sources."""

    def __init__(self) -> None:
        super().__init__()
        self.in_metrics = False
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self.audio: list[str] = []
        self.images = 0
        self._cell: list[str] | None = None
        self._where = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "metrics":
            self.in_metrics = True
        if tag == "audio":
            self.audio.append(a.get("src", ""))
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1
        if self.in_metrics and tag == "th":
            self.headers.append(a.get("data-col", ""))
        if self.in_metrics and tag == "tr":
            self._row = []
        if self.in_metrics and tag == "td":
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if self.in_metrics and tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if self.in_metrics and tag == "tr" and getattr(self, "_row", None):
            self.rows.append(self._row)
            self._row = []
        if self.in_metrics and tag == "table":
            self.in_metrics = False


def make_run(out: Path, n: int = 3, failed: bool = True) -> Path:
    """A run folder as the writer leaves it: WAVs, metrics.csv (one failed row), summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    makers = [harmonic, chirp, formant_pulses]
    rows = []
    for i in range(n):
        x = 0.5 * makers[i % 3](12000)
        y = 0.7 * x + 0.01 * np.random.default_rng(i).standard_normal(x.shape)
        y[6000 + 500 * i] += 0.3
        sid = f"clip{i}"
        sf.write(out / f"{sid}.original.wav", x.astype(np.float32), SR, subtype="FLOAT")
        sf.write(out / f"{sid}.recon.wav", y.astype(np.float32), SR, subtype="FLOAT")
        sf.write(out / f"{sid}.post.wav", (0.9 * y).astype(np.float32), SR, subtype="FLOAT")
        rows.append(
            {
                "id": sid,
                "path": f"/data/{sid}.wav",
                "seconds": 0.75,
                "mel_distance": 0.5 + i,
                "snr": -3.0 * i,
                "clicks_added_per_s": [0.0, 2.0, 0.5][i % 3],
                "post_mel_distance": 0.4 + i,
                "health_mel_hat_nonfinite": 5 if i == 1 else 0,
                "health_mel_hat_nan": 5 if i == 1 else 0,
                "health_mel_hat_constant": 0,
                "health_output_nonfinite": 0,
                "error": "",
            }
        )
    if failed:
        rows.append(
            {"id": "broken", "path": "/data/broken.wav", "error": "/data/broken.wav: cannot decode audio"}
        )
    cols = list(rows[0])
    with open(out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = {
        "n_inputs": len(rows),
        "n_ok": n,
        "n_failed": int(failed),
        "failed": [
            {"id": "broken", "path": "/data/broken.wav", "reason": "/data/broken.wav: cannot decode audio"}
        ]
        if failed
        else [],
        "metrics": {
            "mel_distance": {
                "mean": 1.5,
                "std": 1.0,
                "median": 1.5,
                "ci95_low": 0.5,
                "ci95_high": 2.5,
                "n": n,
                "nan_count": 0,
            },
        },
        "health": {"items_with_nonfinite_mel_hat": 1},
        "timing": {"wall_s": 2.0, "audio_s": 0.75 * n},
        "settings": {"module": {"model": "/models/audioldm2", "precision": "fp32"}, "marker": "SETTINGS-42"},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_read_metrics_csv_parses_numbers(tmp_path):
    out = make_run(tmp_path / "run")
    rows = read_metrics_csv(out / "metrics.csv")
    assert rows[0]["mel_distance"] == 0.5 and rows[1]["health_mel_hat_nonfinite"] == 5
    assert rows[-1]["id"] == "broken" and rows[-1]["mel_distance"] is None


def test_write_report_contents(tmp_path):
    out = make_run(tmp_path / "run", n=3)
    path = write_report(out, embed_audio_clips=1)
    html = path.read_text()
    p = _Tables()
    p.feed(html)
    # the sortable table: one row per reconstructed clip, in id order, with the metric values
    assert [r[0] for r in p.rows] == ["clip0", "clip1", "clip2"]
    col = p.headers.index("mel_distance")
    assert [float(r[col]) for r in p.rows] == [0.5, 1.5, 2.5]
    assert "table class='sortable'" in html and "function sortTable" in html
    # audio: clip0 embedded (three players), later clips linked by relative path
    assert sum(s.startswith("data:audio/wav;base64,") for s in p.audio) == 3
    assert "clip1.recon.wav" in p.audio and "clip2.post.wav" in p.audio
    # one figure per clip, also written to figures/
    assert p.images == 3 and all((out / "figures" / f"clip{i}.png").is_file() for i in range(3))
    # summary with CI, failures, settings, health warnings from the health columns
    assert "[0.5, 2.5]" in html
    assert "cannot decode audio" in html and "SETTINGS-42" in html
    assert "VAE decoder overflowed" in html and "2.00 added clicks per second" in html
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r"(src|href)=['\"](https?:|//)", html) and "<link" not in html


def test_report_main(tmp_path, capsys):
    from vaefix_pl.core.errors import InputsError

    with pytest.raises(InputsError, match="no metrics.csv"):  # `vaefix` prints it as one line, exit 4
        report_main([str(tmp_path)])
    out = make_run(tmp_path / "run", n=2, failed=False)
    assert report_main([str(out), "--embed-audio", "0", "--max-figures", "1", "--title", "T-123"]) == 0
    html = (out / "report.html").read_text()
    assert "<title>T-123</title>" in html and "data:audio/wav" not in html
    assert html.count("data:image/png;base64,") == 1


def test_report_at_the_end_of_reconstruct(tiny_model_dir, tmp_path, monkeypatch):
    """``vaefix reconstruct --report``: the writer calls write_report when it finishes."""
    from vaefix_pl.cli.commands import main

    monkeypatch.setattr(sys, "argv", ["vaefix"])  # LightningCLI looks at sys.argv too
    for name, x in (("tone", harmonic(8000)), ("voice", formant_pulses(6400))):
        sf.write(tmp_path / f"{name}.wav", x.astype(np.float32), SR)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(
        "model:\n  pad_frames_to: 4\n  metrics: [mel_distance, snr]\ntrainer:\n  accelerator: cpu\n"
    )
    out = tmp_path / "out"
    argv = [
        "reconstruct",
        str(tmp_path / "tone.wav"),
        str(tmp_path / "voice.wav"),
        "--model",
        str(tiny_model_dir),
    ]
    assert main(argv + ["--config", str(cfg), "--out", str(out), "--num-workers", "0", "--report"]) == 0
    html = (out / "report.html").read_text()
    p = _Tables()
    p.feed(html)
    assert [r[0] for r in p.rows] == ["tone", "voice"] and p.images == 2
    assert "Tiny random-weight models" in html  # read from the model folder's VAE config


# ------------------------------------------------------------------------------------------ Chromium
CHROMIUM = _screenshot_module().find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"
)


def _dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
        ]
        return subprocess.run(cmd + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@needs_chromium
def test_table_sorts_in_chromium(tmp_path):
    out = make_run(tmp_path / "run", n=3, failed=False)
    path = write_report(out, embed_audio_clips=0, max_figures=0)
    for frag, expected in (
        ("#sort=-mel_distance", ["clip2", "clip1", "clip0"]),
        ("#sort=snr", ["clip2", "clip1", "clip0"]),
    ):
        dom = _dump_dom(path.resolve().as_uri() + frag)
        p = _Tables()
        p.feed(dom)
        assert [r[0] for r in p.rows] == expected, frag
    dom = _dump_dom(path.resolve().as_uri() + "#sort=clicks_added_per_s")
    p = _Tables()
    p.feed(dom)
    assert [r[0] for r in p.rows] == ["clip0", "clip2", "clip1"]


@needs_chromium
def test_screenshot_script_renders_the_report(tmp_path):
    from PIL import Image

    out = make_run(tmp_path / "run", n=2)
    path = write_report(out)
    png = tmp_path / "shot.png"
    rc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "screenshot_report.py"),
            str(path),
            str(png),
            "--height",
            "1800",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert rc.returncode == 0, rc.stderr
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.float64)
    assert img.shape == (1800, 1400, 3)
    assert img.std() > 20  # not a blank page
    # a figure was painted: viridis' dark purple (68, 1, 84) appears in the lower half
    purple = np.all(np.abs(img - np.array([68, 1, 84])) < 12, axis=-1)
    assert purple.sum() > 500
