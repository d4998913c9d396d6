"""``speed: compile`` without tracing in every process: AOTInductor packages per part and shape.

``torch.compile`` re-runs Dynamo and AOTAutograd in every process even with Inductor's caches warm
(about 23 s on an H200 for the VAE decoder and HiFi-GAN). Here each compiled part (VAE encoder, VAE
decoder, vocoder) is exported once per input shape with ``torch.export`` and compiled ahead of time
with AOTInductor into ``<key folder>/aoti/<part>-<shape>.pt2``; a later process of the same key
loads that package (compiled code and weights, no Dynamo) and calls it.

Shapes: a part is called on batches padded to ``batch`` rows (zero rows, dropped from the output;
every item is independent in these networks, so real rows are unchanged), so one package serves every
batch of a run, including the last, smaller one. The frame count is in the file name (the key folder
already fixes model, torch, GPU, precision and speed settings: :mod:`vaefix_pl.core.compile_cache`).

Weights are packaged with the code (constants), so a package belongs to one set of weights: the key
covers the weight files' size and mtime. A part that fails to export or compile falls back to
``torch.compile`` (one log line); a package that fails to load is deleted and rebuilt once.

Where packages are off (CUDA by default: loading one crashed the process there, docs/STARTUP.md), a
part is compiled with ``torch.compile(...).aot_compile`` and saved beside them as
``<part>-<shape>-...-<device><index>-....precompiled``: Dynamo's output code and guards with the
Inductor graph, weights passed in at each call. A later process loads it instead of tracing the part
again; a file that does not load or whose guards refuse the part is rebuilt, and a part that cannot
be precompiled falls back to ``torch.compile`` (one log line each).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaefix_pl.core.compile_cache import AOTI_DIR, BUILD_DIR_PREFIX

log = logging.getLogger(__name__)

#: What happened per part since the process started: ``exported``/``loaded`` (packages),
#: ``precompiled``/``precompiled_loaded`` (precompiled artefacts), ``rebuilt``, ``fallback`` (tests and
#: diagnostics read it; a warm start shows only the ``loaded`` kinds).
STATS: collections.Counter[str] = collections.Counter()


class _Traced(nn.Module):
    """What is exported: ``part.forward`` (bypassing the wrapper on ``part.__call__``) inside the
    caller's autocast region, so that a bf16 run's casts are part of the compiled graph."""

    def __init__(self, part: nn.Module, autocast: tuple[str, torch.dtype] | None) -> None:
        super().__init__()
        self.part = part
        self.autocast = autocast

    def forward(self, x: Tensor) -> Tensor:
        if self.autocast is None:
            return self.part.forward(x)
        with torch.autocast(self.autocast[0], dtype=self.autocast[1]):
            return self.part.forward(x)


def _autocast_state(device_type: str) -> tuple[str, torch.dtype] | None:
    """``(device type, dtype)`` of the active autocast region, ``None`` outside one."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


def _layout(x: Tensor) -> torch.memory_format:
    """The memory format a 4-D input arrives in (channels-last VAE) else contiguous: compiled code
    assumes the strides it was compiled for, so every call is brought to this layout."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _canonical(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x`` (contiguous in ``layout``) viewed with the strides a new tensor of its shape gets there.

    A dimension of size 1 may carry any stride in a contiguous tensor (the 1-channel mel is
    ``(B, 1, T, F)``: a slice of a channels-last copy has stride 1 there, a concatenation ``T F``),
    and compiled code's guards compare every stride, so without this one shape would need one
    compiled artefact per way its batch was assembled. Same memory, no copy.
    """
    want = torch.empty(x.shape, device="meta", memory_format=layout).stride()
    return x if x.stride() == want else x.as_strided(x.shape, want, x.storage_offset())


def _mode_options(mode: str | None, freeze: bool) -> dict[str, Any]:
    """Inductor options of a ``torch.compile`` mode for AOTInductor (CUDA graphs do not apply there)."""
    options: dict[str, Any] = {}
    if mode is not None:
        from torch._inductor import list_mode_options

        options.update(list_mode_options(mode))
        options.pop("triton.cudagraphs", None)
    if freeze:
        options["freezing"] = True
    return options


@contextlib.contextmanager
def _scratch_inductor_dir(folder: Path) -> Iterator[None]:
    """``TORCHINDUCTOR_CACHE_DIR`` at a scratch folder while AOTInductor builds: its intermediate
    files (generated C++, the shared library, a copy of the weights) would double the key folder, and
    the package is the artefact that is kept."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
        shutil.rmtree(folder, ignore_errors=True)


def _plain_tensors(module: nn.Module) -> None:
    """Replace (in place, same values) parameters and buffers created under ``torch.inference_mode``
    (e.g. by speed rewrites applied inside a predict loop): ``torch.export`` cannot trace them."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_inference():
                m._parameters[name] = nn.Parameter(p.clone(), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


def _first_line(exc: BaseException) -> str:
    """An exception's first message line (at most 300 characters), else its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load_package(path: Path, device_index: int) -> Callable[[Tensor], Tensor]:
    """``torch._inductor.aoti_load_package`` without its device check: that check builds about ten
    C++ test programs to find the CPU's vector ISA (13 s on a 2-core machine) only to print a warning;
    the cache key already fixes the machine, torch and GPU the package was built for."""
    from torch.export.pt2_archive._package import AOTICompiledModel

    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, device_index)
    return AOTICompiledModel(loader)


#: ``VAEFIX_AOTI``: ``1`` packages on every device, ``0`` on none; unset: on the CPU only. On CUDA
#: (torch 2.11.0+cu130, H200) ``AOTIModelPackageLoader`` crashed the process with a segmentation fault
#: while loading a package it had just built, for tiny and full-size models, with torch's own loader
#: and with no Inductor options; a crash cannot fall back, so CUDA uses ``torch.compile`` unless asked
#: (docs/STARTUP.md).
AOTI_ENV = "VAEFIX_AOTI"


#: ``VAEFIX_PRECOMPILE``: ``0`` turns off the precompiled ``torch.compile`` artefacts of parts that run
#: without packages (CUDA by default); any other value or unset: on.
PRECOMPILE_ENV = "VAEFIX_PRECOMPILE"
#: File suffix of a precompiled artefact (``torch.compile(...).aot_compile``), beside the packages.
PRECOMPILED_SUFFIX = ".precompiled"


def precompile_enabled() -> bool:
    """Whether parts without packages save and reuse precompiled artefacts (see :data:`PRECOMPILE_ENV`)."""
    return os.environ.get(PRECOMPILE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def packages_enabled(device_type: str) -> bool:
    """Whether parts on ``device_type`` use AOTInductor packages (see :data:`AOTI_ENV`)."""
    flag = os.environ.get(AOTI_ENV, "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    return device_type == "cpu"


class StaticBatchPart:
    """The call of one compiled part: ``(B, ...) -> (B, ...)``, run in batches of exactly ``batch`` rows.

    Installed as ``part._compiled_call_impl`` (as ``nn.Module.compile`` does), so the module tree,
    its parameters and its ``state_dict`` stay as they are. Per input shape, dtype, layout and
    autocast state it uses, in order: where packages are on (:func:`packages_enabled`), the package
    in ``folder`` or a new one exported there; else the precompiled artefact in ``folder`` or a new
    one saved there (:func:`precompile_enabled`); else ``torch.compile`` of the part (``folder=None``
    goes straight to ``torch.compile``).

    Args:
        part: the module (after the speed rewrites).
        name: file-name prefix of its packages (``"decoder"``, ...).
        batch: rows of every call (``None``: the batch as it comes).
        folder: where packages live (``<key folder>/aoti``), or ``None``.
        mode: ``torch.compile`` mode (also applied to AOTInductor, less CUDA graphs).
        freeze: let Inductor fold the weights as constants.
        on_build: called after a new package was written (the cache re-seals its manifest).
    """

    def __init__(
        self,
        part: nn.Module,
        name: str,
        batch: int | None,
        folder: Path | None,
        mode: str | None = None,
        freeze: bool = False,
        on_build: Callable[[], None] | None = None,
    ) -> None:
        self.part, self.name, self.batch, self.folder = part, name, batch, folder
        self.mode, self.freeze, self.on_build = mode, freeze, on_build
        self._runners: dict[tuple, Callable[[Tensor], Tensor]] = {}
        self._compiled: Callable[..., Tensor] | None = None

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if args or kwargs or x.shape[0] == 0:  # not the pipeline's call: run the module as it is
            return self.part._call_impl(x, *args, **kwargs)
        b = x.shape[0]
        n = self.batch or b
        layout = _layout(x)
        outs = []
        for a in range(0, b, n):
            chunk = x[a : a + n]
            m = chunk.shape[0]
            if m < n:  # zero rows: independent of the real ones, dropped below
                chunk = torch.cat([chunk, chunk.new_zeros((n - m, *chunk.shape[1:]))])
            chunk = _canonical(chunk.contiguous(memory_format=layout), layout)
            outs.append(self._runner(chunk, layout)(chunk)[:m])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ------------------------------------------------------------------------------ runners
    def _runner(self, x: Tensor, layout: torch.memory_format) -> Callable[[Tensor], Tensor]:
        autocast = _autocast_state(x.device.type)
        key = (tuple(x.shape), x.dtype, str(x.device), layout, autocast, torch.is_grad_enabled())
        runner = self._runners.get(key)
        if runner is None:
            use = self.folder is not None and packages_enabled(x.device.type)
            runner = self._package_runner(x, layout, autocast) if use else None
            if runner is None and self._can_precompile():
                runner = self._precompiled_runner(x, layout, autocast)
            if runner is None:
                runner = self._compile_runner()
            self._runners[key] = runner
        return runner

    def _compile_runner(self) -> Callable[..., Tensor]:
        """Today's path: ``torch.compile`` of the module's call (static shapes), shared by every shape."""
        if self._compiled is None:
            if self.freeze:
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
            self._compiled = torch.compile(self.part._call_impl, mode=self.mode, dynamic=False)
        return self._compiled

    def _fall_back(self, what: str, exc: Exception) -> None:
        """Count and log (one line) that ``what`` of this part was not built; the caller uses torch.compile."""
        STATS["fallback"] += 1
        log.warning(
            "%s of the %s not built (%s: %s); using torch.compile for it",
            what, self.name, type(exc).__name__, _first_line(exc),
        )  # fmt: skip

    def _can_precompile(self) -> bool:
        """Precompiled artefacts need a folder and the default Inductor options (a ``mode`` with CUDA
        graphs or ``freeze`` stay with ``torch.compile``)."""
        return self.folder is not None and self.mode is None and not self.freeze and precompile_enabled()

    def _precompiled_runner(
        self, x: Tensor, layout: torch.memory_format, autocast: tuple[str, torch.dtype] | None
    ) -> Callable[[Tensor], Tensor] | None:
        """Load this shape's precompiled artefact, tracing and saving it first if missing; ``None``
        (logged) if that fails. A loaded artefact runs without Dynamo tracing the part again."""
        path = self.package_path(x, layout, autocast, PRECOMPILED_SUFFIX)
        traced = _Traced(self.part, autocast)
        t0 = time.perf_counter()
        if path.is_file():
            fn = self._load_precompiled(path, traced, x)
            if fn is not None:
                STATS["precompiled_loaded"] += 1
                log.info("loaded %s (%.1f s)", path.name, time.perf_counter() - t0)
                return functools.partial(fn, traced)
            STATS["rebuilt"] += 1
            path.unlink(missing_ok=True)
        try:
            fn = self._precompile(path, traced, x)
        except Exception as exc:  # noqa: BLE001 - any tracing/saving failure falls back to torch.compile
            return self._fall_back("precompiled artefact", exc)
        STATS["precompiled"] += 1
        log.info("built %s (%.1f s)", path.name, time.perf_counter() - t0)
        if self.on_build is not None:
            self.on_build()
        return functools.partial(fn, traced)

    @staticmethod
    def _precompile(path: Path, traced: nn.Module, x: Tensor) -> Callable[..., Tensor]:
        """``torch.compile(...).aot_compile`` of ``traced`` on ``x`` (in the caller's grad/autocast
        state, which its guards then require), saved atomically to ``path`` (if that fails, logged,
        the compiled function is still used)."""
        import torch._dynamo

        path.parent.mkdir(parents=True, exist_ok=True)
        with torch._dynamo.config.patch(enable_aot_compile=True):
            compiled = torch.compile(type(traced).forward, fullgraph=True, dynamic=False)
            fn = compiled.aot_compile(((traced, x), {}))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            fn.save_compiled_function(str(tmp))
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - a full disk or an unpicklable part costs reuse, not the run
            tmp.unlink(missing_ok=True)
            log.warning(
                "precompiled %s not saved (%s); the next run compiles it again", path.name, _first_line(exc)
            )
        return fn

    @staticmethod
    def _load_precompiled(path: Path, traced: nn.Module, x: Tensor) -> Callable[..., Tensor] | None:
        """The artefact at ``path`` if it loads and its guards accept ``(traced, x)``, else ``None`` (logged)."""
        import torch._dynamo
        import torch._inductor.config as inductor_config

        # compile_threads=1: the kernels are built already and load in this process; more threads
        # would start Inductor's pool of compile workers (a torch import per CPU core) for nothing,
        # beside the data loader's workers (docs/STARTUP.md).
        try:
            with (
                torch._dynamo.config.patch(enable_aot_compile=True),
                inductor_config.patch(compile_threads=1),
                path.open("rb") as f,
            ):
                fn = torch.compiler.load_compiled_function(f)
            if not fn.guard_check(traced, x):
                raise RuntimeError("its guards do not accept this model and input")
        except Exception as exc:  # noqa: BLE001 - an unloadable artefact is rebuilt
            log.warning("precompiled %s not loadable (%s); rebuilding it", path.name, _first_line(exc))
            return None
        return fn

    def package_path(
        self, x: Tensor, layout: torch.memory_format, autocast: Any, suffix: str = ".pt2"
    ) -> Path:
        """``<folder>/<name>-<shape>-<dtype>-<device>-<layout>[-ac_<autocast dtype>]<suffix>``.

        ``<device>`` is the device type for packages (loaded onto the input's device) and, for
        precompiled artefacts (whose code names the device it was traced on), type and index (``cuda1``).
        A precompiled artefact traced with autograd on (its guards require the grad mode it was
        traced in) ends in ``-grad``.
        """
        assert self.folder is not None
        shape = "x".join(map(str, x.shape))
        device = x.device.type
        if suffix == PRECOMPILED_SUFFIX and x.device.index is not None:
            device += str(x.device.index)
        parts = [self.name, shape, str(x.dtype).removeprefix("torch."), device]
        parts.append("cl" if layout == torch.channels_last else "c")
        if autocast is not None:
            parts.append("ac_" + str(autocast[1]).removeprefix("torch."))
        if suffix == PRECOMPILED_SUFFIX and torch.is_grad_enabled():
            parts.append("grad")
        return self.folder / ("-".join(parts) + suffix)

    def _package_runner(
        self, x: Tensor, layout: torch.memory_format, autocast: tuple[str, torch.dtype] | None
    ) -> Callable[[Tensor], Tensor] | None:
        """Load this shape's package, building it first if missing; ``None`` (logged) if that fails."""
        path = self.package_path(x, layout, autocast)
        t0 = time.perf_counter()
        if path.is_file():
            runner = self._load(path, x)
            if runner is not None:
                STATS["loaded"] += 1
                log.info("loaded %s (%.1f s)", path.name, time.perf_counter() - t0)
                return runner
            STATS["rebuilt"] += 1
            path.unlink(missing_ok=True)
        try:
            self._build(path, x, autocast)
        except Exception as exc:  # noqa: BLE001 - any export/AOTI failure falls back to torch.compile
            return self._fall_back("AOTInductor package", exc)
        STATS["exported"] += 1
        log.info("built %s (%.1f s)", path.name, time.perf_counter() - t0)
        runner = self._load(path, x)
        if runner is None:
            STATS["fallback"] += 1
            path.unlink(missing_ok=True)
        elif self.on_build is not None:
            self.on_build()
        return runner

    @staticmethod
    def _load(path: Path, x: Tensor) -> Callable[[Tensor], Tensor] | None:
        index = x.device.index if x.device.type == "cuda" and x.device.index is not None else -1
        if x.device.type == "cuda" and index < 0:
            index = torch.cuda.current_device()
        try:
            return _load_package(path, index)
        except Exception as exc:  # noqa: BLE001 - an unloadable package is rebuilt
            log.warning("AOTInductor package %s not loadable (%s); rebuilding it", path.name, exc)
            return None

    def _build(self, path: Path, x: Tensor, autocast: tuple[str, torch.dtype] | None) -> None:
        """``torch.export`` the part on ``x``'s shape and AOT-compile it into ``path`` (atomically)."""
        import torch.export
        from torch._inductor import aoti_compile_and_package

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")
        # export traces outside inference mode (the pipeline calls the models inside it) and outside
        # the caller's autocast region (re-entered inside the traced module, so it is in the graph)
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            _plain_tensors(self.part)
            example = x.detach().clone().contiguous(memory_format=_layout(x))
            ep = torch.export.export(_Traced(self.part, autocast).eval(), (example,), strict=False)
            with _scratch_inductor_dir(path.parent / f"{BUILD_DIR_PREFIX}{os.getpid()}"):
                aoti_compile_and_package(
                    ep, package_path=str(tmp), inductor_configs=_mode_options(self.mode, self.freeze)
                )
        os.replace(tmp, path)


def compile_parts(
    parts: dict[str, nn.Module], mode: str | None, freeze: bool, batch_size: int | None
) -> dict[str, StaticBatchPart]:
    """Compile ``{name: module}`` in place for static-shape inference (see :class:`StaticBatchPart`).

    Packages go to the active compile cache's key folder
    (:func:`vaefix_pl.core.compile_cache.active_cache`); with none active (in-memory models, a
    library call outside a job) every part uses ``torch.compile``, as before packages existed.
    """
    from vaefix_pl.core.compile_cache import active_cache

    cache = active_cache()
    folder = None if cache is None else cache.path / AOTI_DIR
    on_build = None if cache is None else cache.reseal
    out = {}
    for name, part in parts.items():
        current = part._compiled_call_impl
        if isinstance(current, StaticBatchPart):  # optimize() called twice: keep the first setting
            out[name] = current
            continue
        runner = StaticBatchPart(part, name, batch_size, folder, mode=mode, freeze=freeze, on_build=on_build)
        part._compiled_call_impl = runner
        out[name] = runner
    return out
