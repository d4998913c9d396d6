"""Run in a fresh process by tests/test_compile_cache.py: compile a tiny Conv1d model under the cache.

argv: <cache root> <channels>. Prints one JSON line: the key folder, Inductor's FX-graph-cache hit and
miss counters, why the folder was rebuilt (or null) and the max |compiled - eager| difference.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from vaefix_pl.core.compile_cache import compile_cache  # noqa: E402

root, channels = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv1d(1, channels, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv1d(channels, 1, 3, padding=1)
).eval()
x = torch.randn(2, 1, 64)
with (
    torch.no_grad(),
    compile_cache(
        None, "cpu", "fp32", {"frames": 64}, model_config={"channels": channels}, root=root
    ) as cache,
):
    y = torch.compile(model, dynamic=False)(x)
print(
    json.dumps(
        {
            "key_dir": str(cache.path),
            "hit": counters["inductor"]["fxgraph_cache_hit"],
            "miss": counters["inductor"]["fxgraph_cache_miss"],
            "rebuilt": cache.rebuilt,
            "diff": (y - model(x)).abs().max().item(),
        }
    )
)
