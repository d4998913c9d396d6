"""Measure how the stock SpeechT5HifiGan padding differs from Generator_HiFiRes at 48 kHz (same weights).

Run from the repo root: python benchmarks/hifires_padding.py  (CPU, ~1 min; results in docs/MODELS.md).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from vaefix_pl.core.hifires import build_vocoder
from vaefix_pl.testing import geometry_configs

torch.manual_seed(0)
for size in ("tiny", "full"):
    _, cfg = geometry_configs("audioldm_48k", size)
    v = build_vocoder(cfg)
    v.apply(v._init_weights)
    v = v.double().eval()
    stock = SpeechT5HifiGan(SpeechT5HifiGanConfig(**{**cfg, "upsample_padding": None}))
    stock.load_state_dict(v.state_dict())
    stock = stock.double().eval()
    T = 40
    mel = torch.randn(1, T, 256, dtype=torch.float64) - 5
    t0 = time.time()
    with torch.no_grad():
        a = v(mel)[0]
        b = stock(mel)[0]
    d = (b[16 : 16 + T * 480] - a).abs()
    bad = (d > 1e-9 * a.abs().max()).nonzero().flatten()
    head = bad[bad < T * 240]
    tail = bad[bad >= T * 240]
    print(
        size,
        "len",
        a.shape[0],
        b.shape[0],
        "peak",
        float(a.abs().max()),
        "differ in first",
        int(head.max()) + 1 if len(head) else 0,
        "and last",
        T * 480 - int(tail.min()) if len(tail) else 0,
        "samples; max diff there",
        float(d.max()),
        "interior max",
        float(d[3000:-3000].max()),
        f"{time.time() - t0:.1f}s",
    )
