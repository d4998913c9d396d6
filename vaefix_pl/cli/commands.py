"""The ``vaefix`` command line.

* ``vaefix reconstruct AUDIO... [--seconds 10] [--model SOURCE] [--out DIR] [--devices N]``: the
  reconstruct files, folders or manifests; prints a summary table and where every output went.
* ``vaefix predict --config configs/default.yaml [--data.inputs DIR ...]``: the same run through
  LightningCLI (``--print_config`` works; every option can be overridden).
* ``vaefix demo``: reconstruct the built-in probe set with real AudioLDM2 weights when they are
  present (a ``--model`` folder or the HF cache), else with tiny random models, and say which.
* ``vaefix export-mels``, ``vaefix diagnose``, ``vaefix diagnose-mel``, ``vaefix report``, ``vaefix models``,
  ``vaefix convert``, ``vaefix cache``: see ``vaefix <command> --help``.

``--debug`` (or ``VAEFIX_DEBUG=1``) shows tracebacks. Exit codes: 0 ok, 1 ``--strict`` and an input
failed, 2 bad flag/config/setting, 3 model missing or unusable, 4 no usable input, 5 output folder
unusable, 70 internal error, 130 interrupted.

``reconstruct`` runs the same job, data and writer classes as ``predict``. On one device without
``--config`` files it runs them in a plain loop that never imports Lightning (a few seconds less per
process, docs/STARTUP.md); with ``--devices N``, ``--config`` or ``--print_config`` it builds the
LightningCLI arguments and runs ``predict``. ``VAEFIX_RUNNER=lightning`` forces the Lightning path.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from vaefix_pl.cli.common import add_repair_flag, inputs_parser, make_parser, require_some_input
from vaefix_pl.cli.errors import debug_enabled, fast_exit, quiet_libraries, report_error
from vaefix_pl.core.choices import CROSSFADES, FRAMINGS, PRECISIONS, SPEEDS
from vaefix_pl.core.errors import InputsError
from vaefix_pl.core.metric_names import PERCEPTUAL_METRICS
from vaefix_pl.core.utils import format_number
from vaefix_pl.pipeline.launch import launch, plan_devices, rank_and_world

DEMO_TINY_DIR = Path(os.environ.get("VAEFIX_CACHE", Path.home() / ".cache" / "vaefix")) / "tiny-audioldm2"


# ---------------------------------------------------------------------------------- LightningCLI
def _lightning_cli(args: Sequence[str], run: bool = True):
    from lightning.pytorch.cli import LightningCLI

    from vaefix_pl.lightning.writer import ReconstructionWriter

    class VaefixCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # The writer is a callback configured under its own `writer:` key.
            parser.add_lightning_class_args(ReconstructionWriter, "writer")

    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # the arguments come from `args`; LightningCLI warns when both are set
    try:
        cli = _make(VaefixCLI, args)
    finally:
        sys.argv = saved_argv
    if run:
        require_some_input(getattr(cli.datamodule, "inputs", None))
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    return cli


def _make(cli_class, args: Sequence[str]):
    from vaefix_pl.data.module import AudioDataModule
    from vaefix_pl.lightning.module import ReconstructionModule
    from vaefix_pl.lightning.progress import ClipsPerSecondProgressBar

    return cli_class(
        ReconstructionModule,
        AudioDataModule,
        run=False,
        args=list(args),
        save_config_callback=None,
        seed_everything_default=False,
        auto_configure_optimizers=False,  # an inference config: no optimizer/lr_scheduler keys
        parser_kwargs={"exit_on_error": False},  # parse errors raise; `main` prints them as one line
        trainer_defaults={
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "devices": 1,
            "callbacks": [ClipsPerSecondProgressBar()],
        },
    )


#: exit code of a run that finished but had failed inputs, with ``--strict`` / ``writer.strict: true``
EXIT_INPUTS_FAILED = 1


def _trainer_settings(argv: Sequence[str]) -> dict[str, Any]:
    """The ``trainer.devices/accelerator/strategy/num_nodes`` that LightningCLI arguments resolve to
    (configs in order, then flags), read without Lightning; ``{}`` keys where none is given."""
    import yaml

    keys = ("devices", "accelerator", "strategy", "num_nodes")
    out: dict[str, Any] = {}
    args = list(argv)
    for i, a in enumerate(args):
        name, sep, value = a.partition("=")
        if not sep and i + 1 < len(args):
            value = args[i + 1]
        if name == "--config":
            try:
                cfg = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports it in the ordinary way
            trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
            if isinstance(trainer, dict):
                out.update({k: trainer[k] for k in keys if k in trainer})
        elif name.startswith("--trainer.") and name[len("--trainer.") :] in keys:
            out[name[len("--trainer.") :]] = yaml.safe_load(value) if value else value
    return out


def _predict_launch(argv: Sequence[str]) -> tuple[int, list[str] | None] | None:
    """``(ranks, GPUs)`` when a ``predict`` asks for several devices of this machine with DDP, so the
    ranks can start together (:mod:`vaefix_pl.pipeline.launch`) rather than one after another under
    Lightning's own launcher; ``None``: leave it to Lightning (one device, several nodes, another
    strategy, already one rank of a launch, or ``VAEFIX_RUNNER=lightning``)."""
    if rank_and_world()[1] > 1 or "RANK" in os.environ:
        return None
    if os.environ.get("VAEFIX_RUNNER", "").lower() == "lightning":  # Lightning's own launcher, as before
        return None
    t = _trainer_settings(argv)
    strategy = t.get("strategy")
    if t.get("num_nodes") not in (None, 1) or strategy not in (None, "auto", "ddp"):
        return None
    devices = t.get("devices")
    if isinstance(devices, list):
        devices = ",".join(str(d) for d in devices)
    if devices is None or str(devices) == "1":
        return None
    try:
        world, gpus = plan_devices(devices, t.get("accelerator"))
    except Exception:  # noqa: BLE001 (Lightning gives its own message for what we cannot read)
        return None
    return (world, gpus) if world > 1 else None


def predict_main(argv: Sequence[str]) -> int:
    """Run ``trainer.predict`` from LightningCLI arguments; print the summary on rank 0.

    Several devices of one machine under DDP: every rank is started at once, each a ``predict`` with
    torchrun's variables (Lightning reads its rank from them and starts nothing itself).
    Returns 0, or :data:`EXIT_INPUTS_FAILED` when the writer is ``strict`` and any input failed.
    """
    plan = _predict_launch(argv)
    if plan is not None:
        world, gpus = plan
        # every rank sees every GPU of the run; Lightning gives rank r the r-th (LOCAL_RANK)
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return launch(["predict", *argv, f"--trainer.devices={world}"], world, None)
    cli = _lightning_cli(argv)
    writer = _writer(cli.trainer)
    if not cli.trainer.is_global_zero or writer is None:
        return 0
    return finish_run(writer)


def finish_run(writer: Any) -> int:
    """After a run (rank 0): the report if asked for, the summary, and the exit code."""
    if writer.report:  # a step after predict: the writer (lightning layer) does not import the report
        from vaefix_pl.report.html import write_report

        write_report(writer.output_dir)
    print_summary(writer.output_dir)
    _raise_if_nothing_read(writer.output_dir)
    if writer.strict and writer.failed:
        n = (writer.summary or {}).get("n_failed", "some")
        print(
            f"\nstrict: {n} input(s) failed (see {writer.output_dir}/errors.csv); exit code {EXIT_INPUTS_FAILED}",
            file=sys.stderr,
        )
        return EXIT_INPUTS_FAILED
    return 0


def _raise_if_nothing_read(out_dir: str | Path) -> None:
    """Every input failed: one line naming the first reason (all are in errors.csv)."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    failed = summary.get("failed") or []
    if summary.get("n_ok", 0) == 0 and failed and not (summary.get("resume") or {}).get("skipped_complete"):
        first = failed[0]
        raise InputsError(
            f"no input could be used ({len(failed)} failed, listed in {Path(out_dir) / 'errors.csv'}); "
            f"first: {first.get('reason') or first.get('id')}"
        )


def _writer(trainer):
    from vaefix_pl.lightning.writer import ReconstructionWriter

    for cb in trainer.callbacks:
        if isinstance(cb, ReconstructionWriter):
            return cb
    return None


# ---------------------------------------------------------------------------------- summary table
_fmt = functools.partial(format_number, missing="nan")


def summary_table(summary: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """A short plain-text table of the headline metrics from ``summary.json``."""
    from vaefix_pl.metrics import metric_info

    info = metric_info()
    metrics = summary.get("metrics", {})
    names = [k for k in (keys or metrics) if k in metrics]
    lines = [f"{'metric':<24}{'unit':>12}{'better':>8}{'mean':>11}{'95% CI':>24}{'median':>11}{'n':>5}"]
    for k in names:
        m = metrics[k]
        meta = info.get(k.removeprefix("post_"), {})  # post_*: the same metric on the repaired audio
        lo, hi = m.get("ci95_low"), m.get("ci95_high")
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi))
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if finite else "-"  # n = 1, or no spread to bootstrap
        unit, better = meta.get("unit") or "-", meta.get("better") or "-"
        lines.append(
            f"{k:<24}{unit:>12}{better:>8}{_fmt(m.get('mean')):>11}{ci:>24}{_fmt(m.get('median')):>11}"
            f"{m.get('n', 0):>5}"
        )
    t = summary.get("timing", {})
    lines.append(
        f"{summary.get('n_ok', 0)} clips reconstructed, {summary.get('n_failed', 0)} failed; "
        f"{_fmt(t.get('audio_s'))} s of audio in {_fmt(t.get('wall_s'))} s (x{_fmt(t.get('x_realtime'))} real time)"
    )
    for f in summary.get("failed", []):
        stage = f" ({f['stage']})" if f.get("stage") else ""
        lines.append(f"  FAILED {f['id']}{stage}: {f['reason']}")
    resume = summary.get("resume") or {}
    if resume.get("skipped_complete"):
        lines.append(
            f"{resume['skipped_complete']} clips were already complete in this folder and were not redone"
        )
    return "\n".join(lines)


def print_summary(out_dir: str | Path) -> None:
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    print()
    print(summary_table(summary))
    out = Path(out_dir)
    print(f"\nwrote {out}/: metrics.csv, summary.json, summary.md and the WAV files")
    if summary.get("n_failed") and (out / "errors.csv").is_file():
        print(f"failed inputs: {out / 'errors.csv'}")
    if (out / "report.html").is_file():
        print(f"report: {out / 'report.html'}")


# ---------------------------------------------------------------------------------- reconstruct
def _reconstruct_parser(prog: str = "vaefix reconstruct") -> argparse.ArgumentParser:
    # --config and --print_config are LightningCLI's (passed on to `predict`), not this parser's own
    p = inputs_parser(
        prog,
        "Reconstruct audio through AudioLDM2's VAE + vocoder. A flag whose default is null is unset: the "
        "--config files' value applies, else the default of `vaefix predict`; --print_config prints every "
        "resulting value.",
        config_options=False,
    )
    p.add_argument("--seconds", type=float, default=None, help="crop/pad every clip to this length")
    p.add_argument("--offset", type=float, default=0.0, help="seconds to skip at the start of each file")
    p.add_argument("--model", default=None, help="local diffusers folder or hub id (default cvssp/audioldm2)")
    p.add_argument("--out", default="outputs/reconstruct", help="output folder")
    p.add_argument("--devices", default=None, help="number of devices (GPUs) or 'auto'")
    p.add_argument("--accelerator", default=None, help="cpu, gpu or auto")
    p.add_argument("--precision", default=None, choices=PRECISIONS)
    p.add_argument("--framing", default=None, choices=FRAMINGS)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument(
        "--speed", default=None, choices=SPEEDS,
        help="GPU speed preset: auto (default), none (stock modules), or compile (torch.compile: faster "
        "once compiled; about a minute to compile on a machine's first run, then a start of 8-10 s that "
        "loads it from the cache; for long runs of fixed-length clips, docs/STARTUP.md)",
    )  # fmt: skip
    p.add_argument(
        "--window-seconds",
        default=None,
        help="longer items run in overlapping windows of this length (default 10.24; 'none': whole)",
    )
    p.add_argument("--window-overlap-seconds", type=float, default=None, help="window overlap (default 1.0)")
    p.add_argument("--max-windows", type=int, default=None, help="windows per model call (bounds memory)")
    p.add_argument("--crossfade", default=None, choices=CROSSFADES)
    p.add_argument("--config", action="append", default=[], help="YAML config(s), as for `vaefix predict`")
    add_repair_flag(
        p,
        "also run the click-repair chain from the original bug report (writes <id>.post.wav, scores post_*)",
    )
    p.add_argument(
        "--perceptual",
        action="store_true",
        help="also score PESQ/STOI/ESTOI (slow CPU metrics; config key model.perceptual)",
    )
    p.add_argument("--print_config", action="store_true", help="print the resulting config and exit")
    p.add_argument("--report", action="store_true", help="write report.html at the end")
    p.add_argument("--allow-download", action="store_true", help="let the loader fetch missing weights")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input; by default a rerun into the same --out skips inputs already complete",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help=f"exit with code {EXIT_INPUTS_FAILED} when any input failed (the run still processes all others)",
    )
    return p


def reconstruct_settings(ns: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``vaefix reconstruct`` flags as ``{"model": {...}, "data": {...}, "writer": {...}, "trainer": {...}}``:
    the explicitly given settings only (defaults stay the classes'), for either runner."""
    groups: dict[str, dict[str, Any]] = {
        "data": {
            "inputs": [str(a) for a in ns.audio] if ns.audio else None,
            "seconds": ns.seconds,
            "offset": ns.offset or None,
            "batch_size": ns.batch_size,
            "num_workers": ns.num_workers,
        },
        "model": {
            "model": ns.model,
            "precision": ns.precision,
            "framing": ns.framing,
            "speed": ns.speed,
            "window_overlap_seconds": ns.window_overlap_seconds,
            "max_windows": ns.max_windows,
            "crossfade": ns.crossfade,
        },
        "trainer": {"devices": ns.devices, "accelerator": ns.accelerator},
        "writer": {"output_dir": ns.out},
    }
    out = {g: {k: v for k, v in kv.items() if v is not None} for g, kv in groups.items()}
    if ns.window_seconds is not None:  # "none": whole items (an explicit None, unlike "not given")
        window = str(ns.window_seconds)
        out["model"]["window_seconds"] = None if window.lower() == "none" else float(window)
    if ns.repair:
        from vaefix_pl.repair.config import SEED_FINAL_SETTINGS

        out["model"]["postprocess"] = dict(SEED_FINAL_SETTINGS)
    if ns.perceptual:
        out["model"]["perceptual"] = list(PERCEPTUAL_METRICS)
    for name, key in (("report", "report"), ("overwrite", "overwrite"), ("strict", "strict")):
        if getattr(ns, name):
            out["writer"][key] = True
    if ns.allow_download:
        out["model"]["allow_download"] = True
    return out


def reconstruct_args(ns: argparse.Namespace) -> list[str]:
    """Translate ``vaefix reconstruct`` flags into LightningCLI arguments (explicit flags win over configs)."""
    args: list[str] = []
    for cfg in ns.config:
        args += ["--config", cfg]
    for group, values in reconstruct_settings(ns).items():
        for key, value in values.items():
            text = json.dumps(value) if value is None or isinstance(value, (list, dict, bool)) else value
            args.append(f"--{group}.{key}={text}")
    if ns.print_config:
        args.append("--print_config")
    return args


def _plain_loop(ns: argparse.Namespace) -> bool:
    """Run without Lightning: no config files (they may hold any Trainer setting) and no
    ``--print_config`` (LightningCLI's). ``VAEFIX_RUNNER=lightning`` forces the Lightning path."""
    return not (os.environ.get("VAEFIX_RUNNER", "").lower() == "lightning" or ns.config or ns.print_config)


def run_one_device(settings: dict[str, dict[str, Any]]) -> int:
    """``reconstruct`` in the plain loop (:mod:`vaefix_pl.pipeline.local`): the same job, data and
    writer classes as ``predict``, without importing Lightning. Under a launch (``RANK``/``WORLD_SIZE``
    set, :mod:`vaefix_pl.pipeline.launch` or torchrun) this process is one rank; rank 0 reports."""
    from vaefix_pl.data.inputs import AudioInputs
    from vaefix_pl.pipeline.job import ReconstructionJob
    from vaefix_pl.pipeline.local import mark, predict_local, resolve_device
    from vaefix_pl.pipeline.writer import RunWriter

    mark("imports_done")

    rank, world = rank_and_world()
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if world > 1 else 0
    device = resolve_device(settings["trainer"].get("accelerator"), local_rank)
    job = ReconstructionJob(**settings["model"])
    data = AudioInputs(**settings["data"])
    require_some_input(data.inputs)
    writer = RunWriter(**settings["writer"])
    predict_local(job, data, writer, device, rank=rank, world=world)
    return finish_run(writer) if rank == 0 else 0


def reconstruct_main(argv: Sequence[str]) -> int:
    ns = _reconstruct_parser().parse_args(argv)
    if not ns.print_config:
        require_some_input(ns.audio)
    if not _plain_loop(ns):
        return predict_main(reconstruct_args(ns))
    if rank_and_world()[1] > 1:  # one rank of a launch: this process runs one device
        return run_one_device(reconstruct_settings(ns))
    world, gpus = plan_devices(ns.devices, ns.accelerator)
    if world == 1:
        if gpus and "," in str(ns.devices):  # one GPU picked by index: make it this process's cuda:0
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        return run_one_device(reconstruct_settings(ns))
    return launch(["reconstruct", *argv, "--devices", "1"], world, gpus)


# ---------------------------------------------------------------------------------- demo
def resolve_demo_model(model: str | None) -> tuple[str, bool]:
    """``(source, is_real)``: the given/cached real AudioLDM2 weights, else freshly written tiny models
    (with a banner saying so loudly)."""
    from vaefix_pl.core.models import resolve_model

    def tiny_models(exc: Exception) -> Path:
        from vaefix_pl.testing import write_tiny_audioldm2

        if not (DEMO_TINY_DIR / "vae" / "config.json").is_file():
            write_tiny_audioldm2(DEMO_TINY_DIR, seed=0)
        reason = str(exc).splitlines()[0]
        print(
            "=" * 100
            + f"\nREAL AudioLDM2 WEIGHTS NOT FOUND ({reason})\n"
            + f"Using TINY RANDOM-WEIGHT models from {DEMO_TINY_DIR}: the pipeline, metrics and files are real,\n"
            + "but the audio is NOT a meaningful reconstruction. For the real thing run\n"
            + '    hf download cvssp/audioldm2 --include "vae/*" "vocoder/*"\n'
            + "or pass --model /path/to/audioldm2 (a diffusers folder with vae/ and vocoder/).\n"
            + "=" * 100,
            flush=True,
        )
        return DEMO_TINY_DIR

    return resolve_model(model, fallback=tiny_models)


def demo_main(argv: Sequence[str]) -> int:
    p = make_parser(
        "vaefix demo",
        "Reconstruct the built-in probe set with everything on: the click-repair chain "
        "(<id>.post.wav, post_* scores), PESQ/STOI/ESTOI and report.html. Real AudioLDM2 weights when "
        "--model or the HF cache has them, else tiny random models (said loudly).",
    )
    p.add_argument(
        "--model", default=None, help="diffusers folder or hub id (default: cached cvssp/audioldm2)"
    )
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--devices", default=None, help="number of devices (GPUs) or 'auto'")
    args = p.parse_args(list(argv))
    source, real = resolve_demo_model(args.model)
    print(f"model: {source} ({'real AudioLDM2 weights' if real else 'tiny random models'})", flush=True)
    print("demo turns on: the click-repair chain, PESQ/STOI/ESTOI scoring, report.html", flush=True)
    cli_args = ["--model", source, "--out", args.out, "--perceptual", "--repair", "--report"]
    if args.devices:
        cli_args += ["--devices", args.devices]
    rc = reconstruct_main(cli_args)
    print(
        f"\nmodel used: {source} ({'real AudioLDM2 weights' if real else 'TINY RANDOM MODELS, not real audio'})"
    )
    return rc


# ---------------------------------------------------------------------------------- entry point
#: subcommand -> "module:function" taking argv and returning an exit code. Resolved on use, so each
#: subcommand imports only what it needs and lives beside the code it drives.
COMMANDS: dict[str, str] = {
    "reconstruct": "vaefix_pl.cli.commands:reconstruct_main",
    "predict": "vaefix_pl.cli.commands:predict_main",
    "demo": "vaefix_pl.cli.commands:demo_main",
    "export-mels": "vaefix_pl.cli.export:export_main",
    "diagnose": "vaefix_pl.cli.diagnose:diagnose_main",
    "diagnose-mel": "vaefix_pl.cli.diagnose:diagnose_mel_main",
    "report": "vaefix_pl.cli.report:report_main",
    "models": "vaefix_pl.cli.convert:models_main",
    "convert": "vaefix_pl.cli.convert:convert_main",
    "cache": "vaefix_pl.cli.cache:cache_main",
}


def _resolve(target: str):
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _usage() -> str:
    return "usage: vaefix [--debug] {" + ",".join(COMMANDS) + "} ...\n" + (__doc__ or "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user-facing errors become ``error: <one line>`` on stderr and an exit code
    (see :mod:`vaefix_pl.cli.errors`); ``--debug`` or ``VAEFIX_DEBUG=1`` re-raises with the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = argv[0]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; commands: {', '.join(COMMANDS)}"
        print(f"error: unknown command '{command}'{hint}", file=sys.stderr)
        return 2
    quiet_libraries(debug)
    if debug and command == "convert":
        argv.append("--debug")  # convert prints its own one-line errors unless asked for the traceback
    try:
        return _resolve(COMMANDS[command])(argv[1:]) or 0
    except SystemExit as exc:  # --help, --print_config, or a library that exits on its own
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException as exc:
        if debug:
            raise
        return report_error(exc)


def run() -> NoReturn:
    """The ``vaefix`` console script (and ``python -m vaefix_pl.cli``): :func:`main`, then
    :func:`~vaefix_pl.cli.errors.fast_exit` with its code. Call :func:`main` to stay in the process."""
    fast_exit(main())


if __name__ == "__main__":
    run()
