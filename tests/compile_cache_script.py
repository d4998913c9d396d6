"""Run in a fresh process by tests/test_compile_cache.py: compile a tiny Conv1d model under the cache.

argv: <cache root> <channels> [<path>]. Compiles as ``speed: compile`` does on CUDA (``compile_parts``
with the preset's settings, no AOTInductor packages), through ``path``: ``precompile`` (saved
``aot_compile`` artefacts, CUDA's default) or ``torch.compile`` (the default here: Inductor's own
caches, the fallback). Prints one JSON line: the key folder, Inductor's FX-graph-cache and
AOTAutograd-cache hit and miss counters, the part counters of :data:`vaefix_pl.core.aoti.STATS`, why
the folder was rebuilt (or null) and the max |compiled - eager| difference.
"""

import json
import os
import sys
from pathlib import Path

os.environ["VAEFIX_AOTI"] = "0"  # no packages, as on CUDA
PATH = sys.argv[3] if len(sys.argv) > 3 else "torch.compile"
os.environ["VAEFIX_PRECOMPILE"] = "1" if PATH == "precompile" else "0"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from vaefix_pl.core.aoti import STATS, compile_parts  # noqa: E402
from vaefix_pl.core.compile_cache import compile_cache  # noqa: E402
from vaefix_pl.core.config import SPEED_PRESETS  # noqa: E402

root, channels = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)


class Net(torch.nn.Module):  # a user-defined module, as the VAE and vocoder parts are
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv1d(1, channels, 3, padding=1)
        self.b = torch.nn.Conv1d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.silu(self.a(x)))


model = Net().eval()
x = torch.randn(2, 1, 64)
with (
    torch.no_grad(),
    compile_cache(
        None, "cpu", "fp32", {"frames": 64}, model_config={"channels": channels}, root=root
    ) as cache,
):
    eager = model(x)
    compile_parts({"m": model}, None, SPEED_PRESETS["compile"]["freeze"], x.shape[0])
    y = model(x)
print(
    json.dumps(
        {
            "key_dir": str(cache.path),
            "hit": counters["inductor"]["fxgraph_cache_hit"],
            "miss": counters["inductor"]["fxgraph_cache_miss"],
            "aot_hit": counters["aot_autograd"]["autograd_cache_hit"],
            "aot_miss": counters["aot_autograd"]["autograd_cache_miss"],
            "stats": dict(STATS),
            "rebuilt": cache.rebuilt,
            "diff": (y - eager).abs().max().item(),
        }
    )
)
