"""Multi-GPU scaling of a whole ``vaefix`` run, process timed, with the exactly-once checks.

Each row is one fresh ``vaefix`` command (``python -m vaefix_pl.cli``), timed from ``Popen`` to
exit: imports, model loading, compile or autotune, decoding, the WAVs and the merge into
``metrics.csv`` / ``summary.json`` included. ``--runner reconstruct`` (default): ``vaefix
reconstruct MANIFEST --devices g [--precision bf16] --speed S`` (on g > 1 GPUs one plain-loop
process per GPU, started together). ``--runner predict``: ``vaefix predict`` with the user's configs,
``configs/default.yaml`` (+ ``configs/bf16.yaml``) on one GPU, plus ``configs/multi_gpu.yaml`` on
more (its ranks are also started together). Batch size and loader workers are the same on every row.
Checks per row: unique ids in ``metrics.csv`` == N (and the set of inputs), ``*.recon.wav`` and
``*.original.wav`` == N, one ``summary.json`` with ``n_ok`` == N and no part files left. From
``summary.json`` it also reports each rank's first batch (where compile/autotune shows), loop end
and wait at the closing barrier (``timing.ranks``).

``scaling`` = throughput on g GPUs / (g x throughput on 1 GPU) = wall(1) / (g x wall(g)), against the
1-GPU row of the same speed and N in the same JSON file (runs can be split over several commands
that share ``--work`` and ``--json``: rows are appended).

``--warmup compile`` (default) first runs a small untimed job per (GPUs, speed=compile) so the
compile cache holds this shape for every device index (Inductor's graph cache is keyed by the
device, so a cache warmed on 1 GPU leaves rank 1 cold); ``--warmup none`` times cold caches.

    python benchmarks/multi_gpu.py --counts 3072 --gpus 1,2 --json mgpu.json        # ~4 min on 2 x H200
    python benchmarks/multi_gpu.py --runner predict --counts 3072 --gpus 1,2 --skip-compile --json mgpu.json
    python benchmarks/multi_gpu.py --counts 12288 --gpus 2 --skip-compile --work /tmp/mg ...
    python benchmarks/multi_gpu.py --smoke      # CPU: tiny models, N = 8, 1 and 2 gloo processes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cli_wall import CLIP_S, write_clips, write_models  # noqa: E402

VAEFIX = [sys.executable, "-m", "vaefix_pl.cli", "predict"]  # -m: Lightning relaunches the ranks with it


def predict_cmd(
    a: argparse.Namespace, gpus: int, speed: str, manifest: Path, model: Path, out: Path
) -> list[str]:
    if a.runner == "reconstruct":  # the plain loop; several GPUs: one process each, started together
        cmd = [sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(manifest), "--model", str(model),
               "--out", str(out), "--speed", speed, "--batch-size", str(a.batch_size),
               "--num-workers", str(a.num_workers), "--devices", str(gpus)]  # fmt: skip
        if a.precision != "fp32":
            cmd += ["--precision", a.precision]
        if a.smoke:
            cmd += ["--accelerator", "cpu"]
        return cmd + a.extra.split()
    configs = ["configs/default.yaml"] + (["configs/bf16.yaml"] if a.precision == "bf16" else [])
    configs += ["configs/multi_gpu.yaml"] if gpus > 1 else []
    cmd = [*VAEFIX]
    for c in configs:
        cmd += ["--config", str(ROOT / c)]
    cmd += [
        f"--data.inputs={manifest}",
        f"--model.model={model}",
        f"--model.speed={speed}",
        f"--writer.output_dir={out}",
        f"--data.batch_size={a.batch_size}",
        f"--data.num_workers={a.num_workers}",
        f"--trainer.devices={gpus}",
    ]
    if a.smoke:  # CPU: gloo processes instead of GPUs
        cmd += ["--trainer.accelerator=cpu"] + (["--trainer.strategy=ddp"] if gpus > 1 else [])
    return cmd + a.extra.split()


def check_outputs(out: Path, ids: list[str]) -> dict:
    """Exactly-once checks of one run's output folder."""
    rows = []
    if (out / "metrics.csv").is_file():
        with open(out / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    got = [r["id"] for r in rows]
    summaries = list(out.rglob("summary.json"))
    summary = json.loads(summaries[0].read_text()) if len(summaries) == 1 else {}
    res = {
        "rows": len(got),
        "unique_rows": len(set(got)),
        "recon_wavs": sum(1 for _ in out.rglob("*.recon.wav")),
        "original_wavs": sum(1 for _ in out.rglob("*.original.wav")),
        "summaries": len(summaries),
        "n_ok": summary.get("n_ok"),
        "parts_left": (out / ".parts").exists(),
    }
    n = len(ids)
    res["exactly_once"] = (
        res["rows"] == res["unique_rows"] == n
        and set(got) == set(ids)
        and res["recon_wavs"] == res["original_wavs"] == n
        and res["summaries"] == 1
        and res["n_ok"] == n
        and not res["parts_left"]
    )
    timing = summary.get("timing") or {}
    res["summary_timing"] = {k: timing.get(k) for k in ("wall_s", "predict_s", "write_and_score_tail_s")}
    res["ranks"] = timing.get("ranks") or []
    return res


def run_one(cmd: list[str], out: Path, env: dict[str, str], log: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    row = {"wall_s": time.perf_counter() - t0, "rc": proc.returncode}
    if proc.returncode != 0:
        row["log_tail"] = log.read_text()[-3000:]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="3072", help="clips per run, comma-separated (e.g. 3072,12288)")
    p.add_argument("--gpus", default="1,2", help="GPU counts, comma-separated (1 first: scaling needs it)")
    p.add_argument("--speeds", default="auto,compile")
    p.add_argument("--runner", choices=["reconstruct", "predict"], default="reconstruct",
                   help="`vaefix reconstruct --devices N` (plain loop, ranks started together) or "
                        "`vaefix predict` with configs (Lightning DDP)")  # fmt: skip
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--skip-compile", action="store_true", help="leave out speed=compile")
    p.add_argument("--warmup", choices=["none", "compile", "all"], default="compile",
                   help="untimed small run per (GPUs, speed) first: warms the compile cache per device")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=CLIP_S, help="clip length (s)")
    p.add_argument(
        "--work", default=None, help="folder for models, clips, outputs, compile cache (default: temp)"
    )
    p.add_argument("--json", default=None, help="rows are appended to this file")
    p.add_argument("--extra", default="", help="extra `vaefix predict` flags for every run")
    p.add_argument("--keep-outputs", action="store_true")
    p.add_argument(
        "--smoke", action="store_true", help="CPU, tiny models, N = 8 clips of 1 s, 1 and 2 processes"
    )
    a = p.parse_args()
    if a.smoke:
        a.counts, a.gpus, a.speeds, a.warmup = "8", "1,2", "auto", "none"
        a.batch_size, a.num_workers, a.seconds = 2, 0, 1.0
    counts = [int(c) for c in a.counts.split(",") if c]
    gpu_counts = [int(g) for g in a.gpus.split(",") if g]
    speeds = [s for s in a.speeds.split(",") if s and not (a.skip_compile and s == "compile")]
    work = Path(a.work or tempfile.mkdtemp(prefix="multi_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    model = write_models(work / ("tiny_model" if a.smoke else "model"), tiny=a.smoke)
    t = time.perf_counter()
    clips = write_clips(work / f"clips_{a.seconds:g}s", max(counts), a.seconds)
    print(f"{len(clips)} clips of {a.seconds} s ready in {time.perf_counter() - t:.0f} s", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("VAEFIX_CACHE_DIR", str(work / "cache"))
    if a.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")

    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (gloo processes)"
    store = Path(a.json) if a.json else None
    rows = json.loads(store.read_text())["rows"] if store and store.is_file() else []
    mine = []
    for n in counts:
        manifest = work / f"manifest_{n}.txt"
        manifest.write_text("".join(f"{c}\n" for c in clips[:n]))
        ids = [c.stem for c in clips[:n]]
        for speed in speeds:
            for g in gpu_counts:
                if a.warmup == "all" or (a.warmup == "compile" and speed == "compile"):
                    k = max(g, min(n, a.batch_size * g))  # one batch per rank: the timed run's shape
                    wm = work / f"manifest_warm_{k}.txt"
                    wm.write_text("".join(f"{c}\n" for c in clips[:k]))
                    w = run_one(predict_cmd(a, g, speed, wm, model, work / "out_warm"), work / "out_warm", env,
                                work / f"warm_{g}gpu_{speed}.log")  # fmt: skip
                    print(
                        f"warm-up {g} GPU {speed} ({k} clips): {w['wall_s']:.1f} s rc={w['rc']}", flush=True
                    )
                out = work / f"out_{g}gpu_{speed}_{n}"
                row = {"card": card, "date": str(date.today()), "gpus": g, "speed": speed, "n": n,
                       "runner": a.runner, "precision": a.precision,
                       "seconds": a.seconds, "batch_size": a.batch_size, "num_workers": a.num_workers,
                       "warm": a.warmup == "all" or (a.warmup == "compile" and speed == "compile"),
                       "smoke": a.smoke}  # fmt: skip
                row.update(run_one(predict_cmd(a, g, speed, manifest, model, out), out, env,
                                   work / f"run_{g}gpu_{speed}_{n}.log"))  # fmt: skip
                row.update(check_outputs(out, ids))
                row["clips_per_s"] = n / row["wall_s"]
                rows.append(row)
                mine.append(row)
                if not a.keep_outputs:
                    shutil.rmtree(out, ignore_errors=True)
                print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
                if store:  # partial results survive a command cut short
                    store.write_text(json.dumps({"rows": rows}, indent=1))

    def one_gpu(r: dict) -> dict | None:
        same = [q for q in rows if q["gpus"] == 1 and q["rc"] == 0 and
                all(q.get(k) == r.get(k) for k in ("speed", "n", "seconds", "batch_size", "card", "smoke",
                                                   "runner", "precision"))]  # fmt: skip
        return same[-1] if same else None

    print(f"\n{card}, {date.today()}, torch {torch.__version__}, clips of {a.seconds} s, batch {a.batch_size}, "
          f"{a.num_workers} workers{', tiny random models' if a.smoke else ', full-size random weights'}\n")  # fmt: skip
    print("| runner | GPUs | speed | N | wall s | clips/s | scaling | exactly once | first batch s (ranks) | "
          "waited at end s (ranks) |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in mine:
        base = one_gpu(r)
        r["scaling"] = base["wall_s"] / (r["gpus"] * r["wall_s"]) if base and r["rc"] == 0 else None
        ranks = r["ranks"]
        first = ", ".join(f"{q['first_batch_s']:.1f}" for q in ranks if q.get("first_batch_s") is not None)
        waited = ", ".join(f"{q['waited_at_end_s']:.1f}" for q in ranks)
        once = (
            "yes"
            if r["exactly_once"]
            else (
                f"NO rows={r['unique_rows']}/{r['rows']} wavs={r['recon_wavs']},{r['original_wavs']} "
                f"summaries={r['summaries']} rc={r['rc']}"
            )
        )
        scaling = f"{r['scaling']:.2f}" if r["scaling"] is not None else "-"
        print(f"| {r['runner']} {r['precision']} | {r['gpus']} | {r['speed']}{' (warm)' if r['warm'] else ''} | {r['n']} | {r['wall_s']:.1f} | "
              f"{r['clips_per_s']:.1f} | {scaling} | {once} | {first or '-'} | {waited or '-'} |")  # fmt: skip
    if store:
        store.write_text(json.dumps({"rows": rows}, indent=1))
    failed = [r for r in mine if r["rc"] != 0 or not r["exactly_once"]]
    for r in failed:
        print(
            f"FAILED: {r['gpus']} GPU {r['speed']} N={r['n']}: {r.get('log_tail', '')[-1500:]}",
            file=sys.stderr,
        )
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
