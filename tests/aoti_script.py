"""Run in a fresh process by tests/test_aoti.py: compile tiny models through AOTInductor packages.

argv: <cache root> <model folder> <parts: "vocoder" | "all"> <batch>. ``vocoder``: only the vocoder,
through :func:`vaefix_pl.core.aoti.compile_parts`; ``all``: the whole ``speed: compile`` preset via
``Reconstructor.optimize``. Prints one JSON line: the key folder, why it was rebuilt (or null), the
package counters, each package's mtime and the max |compiled - eager| difference.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vaefix_pl.core import aoti  # noqa: E402
from vaefix_pl.core.compile_cache import compile_cache_for  # noqa: E402
from vaefix_pl.core.config import SPEED_PRESETS  # noqa: E402
from vaefix_pl.core.reconstruct import Reconstructor  # noqa: E402

root, model_dir, parts, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
rec = Reconstructor.from_pretrained(model_dir, pad_frames_to=16).eval()
cache = compile_cache_for(model_dir, "cpu", "fp32", {"parts": parts, "batch_size": batch}, root=root)
cache.activate(seal_at_exit=False)
with torch.inference_mode():
    if parts == "vocoder":
        mel = torch.randn(batch - 1, 16, rec.n_mels)  # one row short of a batch: padded
        eager = rec.vocoder(mel)
        aoti.compile_parts({"vocoder": rec.vocoder}, None, False, batch)
        got = rec.vocoder(mel)
        again = rec.vocoder(mel[:1])  # a smaller batch: the same package
    else:
        lengths = torch.tensor([2400, 1600, 2560])  # 15, 10, 16 frames: one canonical length
        wave = torch.randn(3, 2560) * 0.1
        eager = rec(wave, lengths).waveform
        rec.optimize(**SPEED_PRESETS["compile"], batch_size=batch)
        got = rec(wave, lengths).waveform
        again = rec(wave[:1], lengths[:1]).waveform
cache.seal()
cache.deactivate()
packages = sorted((cache.path / aoti.AOTI_DIR).glob("*.pt2"))
print(
    json.dumps(
        {
            "key_dir": str(cache.path),
            "rebuilt": cache.rebuilt,
            "stats": dict(aoti.STATS),
            "mtimes": {p.name: p.stat().st_mtime_ns for p in packages},
            "diff": (got - eager).abs().max().item(),
            "diff_small": (again - eager[:1, : again.shape[1]]).abs().max().item(),
            "scale": eager.abs().max().item(),
        }
    )
)
