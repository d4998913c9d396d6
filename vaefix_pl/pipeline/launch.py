"""Several devices on one machine: start one plain-loop process per device, all at once.

Lightning's DDP launcher starts rank 0, which imports everything and reaches ``trainer.predict``
before it starts the other ranks; each of those then imports and loads again, so start-up is paid
twice in a row (docs/PERFORMANCE.md, "Multi-GPU"). Here a small parent process (standard library
only, no torch) starts every rank at the same moment and waits:

* rank ``r`` runs the same ``vaefix`` command on one device, with the torchrun variables (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``) and, on GPUs, ``CUDA_VISIBLE_DEVICES`` set to its own GPU;
* the ranks meet in a gloo process group (:class:`~vaefix_pl.pipeline.local.GroupStrategy`) for the
  writer's few collectives (the run lock's id, two barriers, the timing gather); tensors never
  cross it, so no NCCL set-up is needed;
* the first rank that fails stops the others, and the parent exits with its code (the run is
  resumable: every rank's rows are in its own part file, and the folder's lock dies with rank 0);
* rank 0 prints the progress bar and the summary.

The same child code runs under ``torchrun --nproc-per-node N -m vaefix_pl.cli reconstruct ...``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.core.errors import SettingsError

#: what every rank's environment carries (torchrun's names, so its runs and ours read alike)
RANK_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def rank_and_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` of this process from the environment; ``(0, 1)`` outside a launch."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError as exc:
        raise SettingsError(f"RANK/WORLD_SIZE in the environment are not integers: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise SettingsError(f"RANK={rank} and WORLD_SIZE={world} in the environment do not fit together")
    return rank, world


def visible_gpus() -> list[str]:
    """CUDA device names this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else one index per
    GPU the NVIDIA driver lists (read from ``/proc``: asking torch would cost its import and a CUDA
    initialisation in a parent that runs no model)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        names = [d.strip() for d in env.split(",") if d.strip()]
        out = []
        for d in names:  # CUDA stops at the first invalid entry (e.g. -1 hides every GPU)
            if d.lstrip("-").isdigit() and int(d) < 0:
                break
            out.append(d)
        return out
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return [str(i) for i in range(sum(1 for _ in gpus.iterdir()))]
    except OSError:
        return []


def plan_devices(devices: object, accelerator: str | None) -> tuple[int, list[str] | None]:
    """``(processes, CUDA_VISIBLE_DEVICES of each)`` for ``--devices``/``--accelerator``; ``None``
    device names for CPU processes.

    ``devices``: a count (``2``), ``auto``/``-1`` (every visible GPU, else one CPU process) or GPU
    indices (``0,2``). ``accelerator``: ``cpu`` (``devices`` CPU processes), ``gpu``/``cuda`` (an
    error without enough GPUs) or ``auto``/``None`` (GPUs when the driver lists any, else the CPU).
    """
    acc = (accelerator or "auto").lower()
    if acc not in ("cpu", "gpu", "cuda", "auto"):
        raise SettingsError(f"--accelerator must be cpu, gpu or auto, got {accelerator!r}")
    text = str(devices if devices is not None else 1).strip().strip("[]").replace(" ", "")
    gpus = [] if acc == "cpu" else visible_gpus()
    if acc in ("gpu", "cuda") and not gpus:
        raise SettingsError(f"--accelerator {accelerator}: no CUDA device is visible on this machine")
    if text.lower() in ("auto", "-1"):
        return (len(gpus), gpus) if gpus else (1, None)
    if "," in text:  # explicit GPU indices into the visible list
        try:
            picks = [int(t) for t in text.split(",") if t]
        except ValueError:
            raise SettingsError(
                f"--devices {devices!r}: expected a count, 'auto' or GPU indices like 0,1"
            ) from None
        if acc == "cpu":
            raise SettingsError(f"--devices {devices!r}: GPU indices with --accelerator cpu")
        bad = [i for i in picks if not 0 <= i < len(gpus)]
        if bad or len(set(picks)) != len(picks):
            raise SettingsError(
                f"--devices {devices!r}: {len(gpus)} GPU(s) visible (indices 0-{len(gpus) - 1})"
            )
        return len(picks), [gpus[i] for i in picks]
    try:
        n = int(text)
    except ValueError:
        raise SettingsError(
            f"--devices {devices!r}: expected a count, 'auto' or GPU indices like 0,1"
        ) from None
    if n < 1:
        raise SettingsError(f"--devices must be >= 1, 'auto' or -1, got {devices!r}")
    if not gpus:
        return n, None
    if n > len(gpus):
        raise SettingsError(f"--devices {n}: only {len(gpus)} GPU(s) visible on this machine")
    return n, gpus[:n]


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago (rank 0's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int, gpu: str | None) -> dict[str, str]:
    """The environment of rank ``rank`` (the parent's, plus the torchrun variables and its GPU)."""
    env = dict(os.environ)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def launch(
    argv: Sequence[str],
    world: int,
    gpus: Sequence[str] | None,
    poll_s: float = 0.1,
    program: Sequence[str] | None = None,
) -> int:
    """Run ``python -m vaefix_pl.cli *argv`` (or ``*program, *argv``) as ranks ``0 .. world-1`` at
    once; their exit code.

    0 when every rank exits 0; otherwise the first failing rank's code, after the other ranks are
    stopped (SIGTERM, then SIGKILL after 10 s): a rank that died would leave the others waiting at
    the next collective. Ctrl-C reaches every rank (one process group) and the parent waits for them.
    """
    port = free_port()
    cmd = [*(program or (sys.executable, "-m", "vaefix_pl.cli")), *argv]
    procs = [
        subprocess.Popen(cmd, env=rank_env(r, world, port, gpus[r] if gpus else None)) for r in range(world)
    ]
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad and failed is None:
                failed = bad[0]
                _stop([p for p in procs if p.poll() is None])
            if all(c is not None for c in codes):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for p in procs:  # the terminal's Ctrl-C already reached them; wait for their clean exit
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    if failed is None:
        return 0
    rank, code = failed
    if code < 0:  # killed (e.g. by the kernel's OOM killer): it could not say so itself
        where = f" (GPU {gpus[rank]})" if gpus else ""
        print(
            f"error: rank {rank}{where} was killed by signal {-code}; the other ranks were stopped "
            "(rerun the same command to resume)",
            file=sys.stderr,
        )
        return 1
    return code  # the rank printed its own one-line error


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
