"""``vaefix diagnose`` and ``vaefix diagnose-mel``: argument parsing, printing and exit codes over :mod:`vaefix_pl.diagnose`."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vaefix_pl.cli.common import add_repair_flag, inputs_parser, make_parser, require_some_input
from vaefix_pl.core.frontend import FRAMINGS
from vaefix_pl.core.models import PRECISIONS, is_full_size
from vaefix_pl.diagnose.mel import diagnose_mel
from vaefix_pl.diagnose.mistakes import load_mel
from vaefix_pl.diagnose.run import _load_inputs, _write_tables, run_diagnosis


def _diagnose_parser():
    p = inputs_parser(
        "vaefix diagnose",
        "Stage-wise diagnosis of AudioLDM2 reconstruction: (a) vocoder on the true mel, (b) VAE round "
        "trip, (c) full pipeline, (d) + repair chain; numeric health per stage; figures and report.html.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder or hub id (default: real weights if cached, "
        "else tiny random models, said loudly)",
    )
    p.add_argument("--out", default="outputs/diagnose", help="output folder")
    add_repair_flag(p, "stage (d): the click-repair chain from the original bug report")
    p.add_argument(
        "--seconds", type=float, default=None, help="crop each file (probe set: length, default 4)"
    )
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--framing", default="tacotron", choices=FRAMINGS)
    p.add_argument("--pad-frames-to", type=int, default=1024, help="canonical length multiple (frames)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--embed-audio", type=int, default=None, help="clips whose audio report.html embeds")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.html")
    p.add_argument("--allow-download", action="store_true")
    p.add_argument("--json", action="store_true", help="print the per-clip diagnosis as JSON")
    return p


def diagnose_main(argv: Sequence[str]) -> int:
    """``vaefix diagnose AUDIO... [--model] [--out] [--repair]``: prints the verdict per stage per clip,
    writes the WAVs of every stage, ``metrics.csv``, ``summary.json``, ``diagnosis.json``, figures and
    ``report.html``. Exit code 0, or 1 when no clip could be diagnosed."""
    args = _diagnose_parser().parse_args(list(argv))
    require_some_input(args.audio)
    from vaefix_pl.cli.commands import resolve_demo_model
    from vaefix_pl.core.reconstruct import Reconstructor

    t0 = time.perf_counter()
    source, real = resolve_demo_model(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rec = Reconstructor.from_pretrained(
        source,
        precision=args.precision,
        device=device,
        allow_download=args.allow_download,
        framing=args.framing,
        pad_frames_to=args.pad_frames_to,
    )
    chain = None
    if args.repair:
        from vaefix_pl.repair.chain import PostProcessChain

        chain = PostProcessChain.seed_final(sample_rate=rec.sample_rate).to(device)
    items, failed = _load_inputs(args.audio, args.seconds, rec.sample_rate)
    items = [(i, p, w.to(device)) for i, p, w in items]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.json else print
    rows, details = run_diagnosis(rec, items, out, chain=chain, batch_size=args.batch_size, log=log)
    wall = time.perf_counter() - t0
    audio_s = sum(r["seconds"] for r in rows)
    full_size = is_full_size(rec)
    settings = {
        "command": "diagnose",
        "model": source,
        "full_size_models": full_size,
        "real_weights": real and full_size,
        "reconstructor": rec.settings(),
        "postprocess": chain.describe() if chain is not None else None,
        "device": str(device),
    }
    summary = _write_tables(
        out,
        rows,
        failed,
        {"timing": {"wall_s": wall, "audio_s": audio_s}, "settings": settings},
    )
    from vaefix_pl.runs.files import atomic_write_text, jsonable

    atomic_write_text(
        out / "diagnosis.json", json.dumps(jsonable({"settings": settings, "items": details}), indent=2)
    )
    for f in failed:
        print(f"FAILED {f['id']}: {f['error']}")
    if args.json:
        print(json.dumps(jsonable(details), indent=2))
    print(
        f"\n{summary['n_ok']} clips diagnosed, {summary['n_failed']} failed; model {source} "
        f"({'full-size AudioLDM2 models' if full_size else 'TINY TEST MODELS: the numbers say nothing about AudioLDM2'})"
    )
    print(f"wrote {out}/: metrics.csv, summary.json, diagnosis.json and the WAVs of every stage")
    if not args.no_report:
        from vaefix_pl.report.html import write_report

        kwargs = {} if args.embed_audio is None else {"embed_audio_clips": args.embed_audio}
        print(f"report: {write_report(out, **kwargs)}")
    return 0 if rows else 1


def diagnose_mel_main(argv: Sequence[str]) -> int:
    """``vaefix diagnose-mel MEL [--audio AUDIO] [--key K] [--framing] [--json]``.

    Prints the verdict. Exit code 0 when the mel looks right, 1 when a mistake was found.
    """
    p = make_parser(
        "vaefix diagnose-mel",
        "Check a mel computed with your own front-end against AudioLDM2's (64-band natural-log "
        "magnitude mel, hop 160 at 16 kHz, (T, 64)). Give the audio it came from for a certain verdict.",
    )
    p.add_argument("mel", help=".npy, .npz, .pt or .pth file (a tensor or a dict holding one)")
    p.add_argument("--audio", default=None, help="the audio file the mel was computed from")
    p.add_argument("--key", default=None, help="which entry of a dict/npz file holds the mel")
    p.add_argument("--framing", default="tacotron", choices=FRAMINGS)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--save-corrected", default=None, help="write the corrected (1, 1, T, 64) mel here (.npy/.pt)"
    )
    args = p.parse_args(list(argv))
    require_some_input([args.mel])
    if args.audio:
        require_some_input([args.audio])
    mel = load_mel(args.mel, key=args.key)
    audio = None
    if args.audio:
        from vaefix_pl.data.audio import load_audio

        audio = load_audio(args.audio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = diagnose_mel(mel, audio, framing=args.framing)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        print(verdict)
    if args.save_corrected:
        if verdict.corrected is None:
            print("no corrected mel: a finding needs the mel recomputed from the audio", file=sys.stderr)
        else:
            target = Path(args.save_corrected)
            if target.suffix == ".npy":
                np.save(target, verdict.corrected.numpy())
            else:
                torch.save(verdict.corrected, target)
            print(f"wrote {target}")
    return 0 if verdict.ok else 1
