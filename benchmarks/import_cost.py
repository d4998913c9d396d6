"""Import cost of what `vaefix` loads at start-up, each in a fresh process (docs/STARTUP.md).

For each statement: wall time of running it after a preload (``import torch``, then also
``import lightning.pytorch``), best of ``--repeat`` fresh processes, so the figure is what deferring
that import would save on that path.

    python benchmarks/import_cost.py --repeat 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOADS = {"torch": "import torch", "torch+lightning": "import torch, lightning.pytorch"}
STATEMENTS = [
    "import torch",
    "import lightning.pytorch",
    "import lightning.pytorch.cli",
    "import torchmetrics",
    "import torchaudio",
    "import scipy.signal",
    "from matplotlib.figure import Figure; from matplotlib.backends.backend_agg import FigureCanvasAgg",
    "from diffusers import AutoencoderKL",
    "from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL",
    "from transformers import SpeechT5HifiGan",
    "from transformers.models.speecht5.modeling_speecht5 import SpeechT5HifiGan",
    "import vaefix_pl.cli",
    "import vaefix_pl.lightning.module",
    "import vaefix_pl.lightning.writer",
    "import vaefix_pl.pipeline.local",
    "import vaefix_pl.report.html",
    "import vaefix_pl.core.reconstruct",
    "import torch._dynamo",
    "import torch; torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')",
    "import vaefix_pl.metrics.classes",
]


def timed(preload: str, stmt: str) -> float:
    code = f"import time\n{preload}\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    print("| statement | " + " | ".join(f"after `{v}` [s]" for v in PRELOADS.values()) + " |")
    print("|---|" + "---|" * len(PRELOADS))
    for stmt in STATEMENTS:
        cells = []
        for pre in PRELOADS.values():
            if stmt == "import torch" and cells:
                cells.append("-")
                continue
            cells.append(
                f"{min(timed(pre if stmt != 'import torch' else '', stmt) for _ in range(a.repeat)):.2f}"
            )
        print(f"| `{stmt}` | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
