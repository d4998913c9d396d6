"""Click benchmark on real audio: recall of ``added_clicks`` (and FFmpeg ``adeclick``) by click type and level.

Speech (espeak-ng, 6 voices/languages) and music (sox synth: plucked chords, organ, piano-like tones,
shaped noise) at 16 kHz, peak 0.5 (``tests/real_audio.py``). For each item and each base
(reference, clean estimate) -- identity, low-pass 7 kHz + 5 ms delay, Griffin-Lim, the tiny random
HiFi-GAN (``vaefix_pl.testing``) and bf16 vs fp32 of that model -- one copy of the estimate per click
type gets a click about every 0.2 s (impulses, 0.5-5 ms Hann noise bursts, DC steps, 1-5 ms dropouts;
-40..-6 dBFS peaks; fixed seed). A click is *detected* when a detector event onset lies within
``--tolerance-ms`` (5 ms) of the samples it changed (a step: of its discontinuity); its *level* is the
peak of what it adds (a dropout: of the removed signal) over the clean estimate's RMS in +-10 ms.

``adeclick`` is reference-free: it sees only the estimate (see ``adeclick_onsets`` for how its repaired
samples are counted as events), so its false alarms are every repair it makes on a clean estimate.

Run from the repository root::

    python benchmarks/clicks.py [--quick] [--json out.json] [--no-adeclick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # shared real-audio helpers (tests/real_audio.py)

import real_audio as ra  # noqa: E402

SR = ra.SR


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def run(
    corpora: dict[str, dict[str, np.ndarray]],
    base_names: tuple[str, ...],
    detectors: dict,
    tolerance_ms: float = 5.0,
    seed: int = 0,
) -> list[dict]:
    """One row per (detector, corpus, base, item, click or clean run)."""
    tol = int(round(tolerance_ms * SR / 1000))
    rows = []
    for corpus, items in corpora.items():
        for item, x in items.items():
            pairs = ra.bases(x, base_names)
            for base, (ref, est) in pairs.items():
                runs = {"clean": (est, [])}
                for kind in ra.CLICK_TYPES:
                    runs[kind] = ra.insert_clicks(est, kind, _seed(str(seed), corpus, item, base, kind))
                for det_name, detect in detectors.items():
                    t0 = time.perf_counter()
                    names = list(runs)
                    onsets = detect([ref] * len(names), [runs[k][0] for k in names])
                    dt = time.perf_counter() - t0
                    for k, det in zip(names, onsets):
                        clicks = runs[k][1]
                        found, false = ra.match(det, clicks, tol)
                        rows.append(
                            {
                                "detector": det_name,
                                "corpus": corpus,
                                "base": base,
                                "item": item,
                                "run": k,
                                "seconds": x.shape[-1] / SR,
                                "false": false,
                                "levels_db": [c.level_db for c in clicks],
                                "found": found.tolist(),
                                "time_s": dt / len(names),
                            }
                        )
    return rows


def _adeclick(references, estimates):
    return [ra.adeclick_onsets(e) for e in estimates]


RECALL_BASES = ("identity", "lowpass_delay", "griffin_lim")


def summarise(rows: list[dict], recall_bases: tuple[str, ...] = RECALL_BASES) -> dict:
    """recall[detector][corpus][type][band] = (found, total) over ``recall_bases``;
    false_per_s[detector][corpus][base]; recall of clicks >= 0 dB per base."""
    recall = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0]))))
    by_base = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    false = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0.0])))
    false_with = defaultdict(lambda: defaultdict(lambda: [0, 0.0]))
    for r in rows:
        d, c = r["detector"], r["corpus"]
        if r["run"] == "clean":
            f = false[d][c][r["base"]]
            f[0] += r["false"]
            f[1] += r["seconds"]
            continue
        fw = false_with[d][c]
        fw[0] += r["false"]
        fw[1] += r["seconds"]
        for lvl, ok in zip(r["levels_db"], r["found"]):
            for band in (ra.band_of(lvl), "all") if r["base"] in recall_bases else ():
                cell = recall[d][c][r["run"]][band]
                cell[0] += int(ok)
                cell[1] += 1
            if lvl >= 0:
                cell = by_base[d][c][r["base"]]
                cell[0] += int(ok)
                cell[1] += 1

    def plain(obj):
        return {k: plain(v) for k, v in obj.items()} if isinstance(obj, dict) else obj

    return {
        "recall": plain(recall),
        "recall_by_base_at_or_above_0db": plain(by_base),
        "false_per_s_clean": {
            d: {c: {b: v[0] / v[1] for b, v in bs.items()} for c, bs in cs.items()} for d, cs in false.items()
        },
        "false_per_s_with_clicks": {
            d: {c: v[0] / v[1] for c, v in cs.items()} for d, cs in false_with.items()
        },
    }


def _cell(fc: list[int] | None) -> str:
    if not fc or fc[1] == 0:
        return "-"
    return f"{fc[0] / fc[1]:.2f} ({fc[1]})"


def table(summary: dict, base_names: tuple[str, ...], recall_bases: tuple[str, ...] = RECALL_BASES) -> str:
    bands = [b[0] for b in ra.LEVEL_BANDS]
    lines = [
        f"Recall by click type and level over the local RMS (+-10 ms), bases {', '.join(recall_bases)} "
        "pooled; (n) = clicks",
        "",
        "| detector | audio | click | " + " | ".join(bands) + " | all |",
        "|---|---|---|" + "---|" * (len(bands) + 1),
    ]
    for d, cs in summary["recall"].items():
        for c, ts in cs.items():
            for t in ra.CLICK_TYPES:
                cells = [_cell(ts.get(t, {}).get(b)) for b in (*bands, "all")]
                lines.append(f"| {d} | {c} | {t} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "False clicks per second on each clean base (and with clicks, outside every click's window), "
        "and recall of clicks >= 0 dB over the local RMS on that base",
        "",
        "| detector | audio | " + " | ".join(base_names) + " | with clicks |",
        "|---|---|" + "---|" * (len(base_names) + 1),
    ]
    for d, cs in summary["false_per_s_clean"].items():
        for c, bs in cs.items():
            cells = [
                f"{bs[b]:.3f} / {_cell(summary['recall_by_base_at_or_above_0db'][d][c].get(b))}"
                for b in base_names
            ]
            lines.append(
                f"| {d} | {c} | " + " | ".join(cells) + f" | {summary['false_per_s_with_clicks'][d][c]:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 speech + 2 music items (the test subset)")
    p.add_argument("--bases", nargs="*", default=list(ra.BASES), choices=list(ra.BASES))
    p.add_argument("--no-adeclick", action="store_true", help="skip the FFmpeg adeclick peer")
    p.add_argument("--tolerance-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recall-bases", nargs="*", default=list(RECALL_BASES), help="bases pooled in the recall table"
    )
    p.add_argument("--json", type=Path, help="write the summary and per-run rows here")
    args = p.parse_args(argv)
    tools = ra.TOOLS + (() if args.no_adeclick else ("ffmpeg",))
    missing = ra.missing_tools(tools)
    if missing:
        print(f"benchmarks/clicks.py: missing tools {missing} (Debian: apt-get install espeak-ng sox ffmpeg)")
        return 2
    speech_names = ("en", "de", "en_f") if args.quick else None
    music_names = ("pluck", "piano") if args.quick else None
    corpora = {"speech": ra.corpus("speech", speech_names), "music": ra.corpus("music", music_names)}
    detectors = {"added_clicks": ra.added_click_onsets}
    if not args.no_adeclick:
        detectors["adeclick"] = _adeclick
    base_names = tuple(args.bases)
    t0 = time.perf_counter()
    rows = run(corpora, base_names, detectors, args.tolerance_ms, args.seed)
    recall_bases = tuple(b for b in args.recall_bases if b in base_names)
    summary = summarise(rows, recall_bases)
    print(table(summary, base_names, recall_bases))
    secs = {c: sum(x.shape[-1] for x in items.values()) / SR for c, items in corpora.items()}
    print(
        f"\naudio: {secs['speech']:.1f} s speech, {secs['music']:.1f} s music; wall {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "summary": summary, "rows": rows}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
