"""AOTInductor packages of ``speed: compile``: static batches, reuse across processes, keying, corruption."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vaefix_pl.core import aoti
from vaefix_pl.core import compile_cache as cc

SCRIPT = Path(__file__).with_name("aoti_script.py")


def _run(root: Path, model: Path, parts: str, batch: int = 4) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(root), str(model), parts, str(batch)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


class _RowNet(nn.Module):
    """Per-row GroupNorm + conv: rows are independent, as in the VAE and the vocoder."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(2, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.norm(x))


def _eager_part(net, batch, calls):
    """A StaticBatchPart whose compiled runner is the eager forward, recording each call's shape."""
    part = aoti.StaticBatchPart(net, "net", batch, folder=None)

    def runner(x):
        calls.append(tuple(x.shape))
        return net.forward(x)

    part._compile_runner = lambda: runner
    return part


@pytest.mark.parametrize("rows", [1, 3, 4, 9])
def test_every_call_has_the_batch_rows_and_real_rows_are_unchanged(rows):
    torch.manual_seed(0)
    net = _RowNet().eval()
    x = torch.randn(rows, 4, 32)
    calls = []
    with torch.no_grad():
        got = _eager_part(net, 4, calls)(x)
        ref = torch.cat([net(x[i : i + 1]) for i in range(rows)])  # one item at a time
    assert calls and all(c == (4, 4, 32) for c in calls)
    assert len(calls) == -(-rows // 4)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_no_batch_size_runs_the_batch_as_it_comes():
    net = _RowNet().eval()
    calls = []
    with torch.no_grad():
        _eager_part(net, None, calls)(torch.randn(3, 4, 8))
    assert calls == [(3, 4, 8)]


def test_channels_last_input_keeps_its_layout():
    net = nn.Conv2d(4, 4, 3, padding=1).eval()
    part = aoti.StaticBatchPart(net, "net", 2, folder=None)
    seen = []
    part._compile_runner = lambda: lambda x: seen.append(x) or net.forward(x)
    x = torch.randn(1, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        part(x)
    assert seen[0].shape[0] == 2 and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()


def _one_channel_variants():
    """The two ways the pipeline hands a 1-channel ``(B, 1, T, F)`` mel to the encoder: a batch of a
    slice of a channels-last copy (stride 1 on the size-1 channel dim) and one row padded by
    concatenation (stride ``T F`` there). Same shape, same memory layout, different strides."""
    torch.manual_seed(0)
    mel = torch.randn(3, 8, 16).transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last)
    full, one = mel[:2], mel[2:]
    assert full.stride()[1] == 1
    return full, one


def test_one_shape_reaches_the_compiled_code_with_one_set_of_strides():
    net = nn.Conv2d(1, 4, 3, padding=1).eval()
    part = aoti.StaticBatchPart(net, "encoder", 2, folder=None)
    seen = []
    part._compile_runner = lambda: lambda x: seen.append(x.stride()) or net.forward(x)
    full, one = _one_channel_variants()
    with torch.no_grad():
        torch.testing.assert_close(part(full), net(full))
        torch.testing.assert_close(part(one), net(one))  # padded to 2 rows by concatenation
    assert len(seen) == 2 and seen[0] == seen[1] == torch.empty(2, 1, 16, 8).stride()


@pytest.mark.slow
def test_a_batch_assembled_another_way_loads_the_same_precompiled_artefact(tmp_path, monkeypatch, caplog):
    """Compiled code's guards compare every stride: before the part gave each shape one set of
    strides, a full batch and a padded one of the 1-channel mel rebuilt each other's artefact in
    every run (found on the H200)."""
    monkeypatch.setenv(aoti.AOTI_ENV, "0")
    monkeypatch.delenv(aoti.PRECOMPILE_ENV, raising=False)
    net = nn.Conv2d(1, 4, 3, padding=1).eval()
    full, one = _one_channel_variants()
    before = aoti.STATS.copy()
    with torch.no_grad():
        aoti.StaticBatchPart(net, "encoder", 2, tmp_path / "aoti")(full)
        later = aoti.StaticBatchPart(net, "encoder", 2, tmp_path / "aoti")  # as in the next process
        with caplog.at_level(logging.WARNING, logger="vaefix_pl.core.aoti"):
            torch.testing.assert_close(later(one), net(one))
    assert aoti.STATS["precompiled"] == before["precompiled"] + 1
    assert aoti.STATS["precompiled_loaded"] == before["precompiled_loaded"] + 1
    assert aoti.STATS["rebuilt"] == before["rebuilt"]
    assert not [r for r in caplog.records if r.name == "vaefix_pl.core.aoti"]


def test_failed_export_falls_back_to_torch_compile_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(aoti.PRECOMPILE_ENV, "0")  # straight to torch.compile, not a precompiled artefact
    net = _RowNet().eval()
    part = aoti.StaticBatchPart(net, "vocoder", 2, folder=tmp_path / "aoti")
    monkeypatch.setattr(
        part, "_build", lambda *a: (_ for _ in ()).throw(RuntimeError("unsupported op\nmore"))
    )
    part._compile_runner = lambda: net.forward
    before = aoti.STATS["fallback"]
    with caplog.at_level(logging.WARNING, logger="vaefix_pl.core.aoti"), torch.no_grad():
        part(torch.randn(2, 4, 8))
        part(torch.randn(1, 4, 8))  # same shape after padding: no second attempt
    assert aoti.STATS["fallback"] == before + 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "vocoder" in lines[0] and "unsupported op" in lines[0]
    assert "more" not in lines[0]


def test_unloadable_package_is_reported_not_raised(tmp_path):
    bad = tmp_path / "decoder-x.pt2"
    bad.write_bytes(b"\x00not a zip")
    assert aoti.StaticBatchPart._load(bad, torch.zeros(1)) is None


def test_compile_parts_writes_into_the_active_cache_and_only_once(tmp_path):
    net = _RowNet()
    assert aoti.compile_parts({"a": net}, None, False, 4)["a"].folder is None  # no cache: torch.compile
    net2 = _RowNet()
    cache = cc.CompileCache(tmp_path / "k")
    cache.activate(seal_at_exit=False)
    try:
        assert cc.active_cache() is cache
        part = aoti.compile_parts({"b": net2}, "max-autotune", True, 8)["b"]
        assert part.folder == cache.path / aoti.AOTI_DIR and part.batch == 8
        assert net2._compiled_call_impl is part
        assert aoti.compile_parts({"b": net2}, None, False, 2)["b"] is part  # optimize() twice
    finally:
        cache.deactivate()
    assert cc.active_cache() is None
    assert [n for n, _ in net2.named_parameters()] == [n for n, _ in _RowNet().named_parameters()]


def test_mode_options_drop_cuda_graphs():
    opts = aoti._mode_options("max-autotune", True)
    assert opts["max_autotune"] and opts["freezing"] and "triton.cudagraphs" not in opts
    assert aoti._mode_options(None, False) == {}


def test_packages_are_sealed_and_a_corrupt_one_fails_verify(tmp_path):
    cache = cc.CompileCache(tmp_path / "k")
    pkg = cache.path / aoti.AOTI_DIR / "vocoder-4x16x64-float32-cpu-c.pt2"
    pkg.parent.mkdir(parents=True)
    pkg.write_bytes(b"package")
    (pkg.parent / "vocoder-x.123.partial.pt2").write_bytes(b"half")  # being built: not an artefact
    (pkg.parent / ".build.123" / "f.so").parent.mkdir()
    (pkg.parent / ".build.123" / "f.so").write_bytes(b"scratch")
    cache.inductor_dir.mkdir()
    cache.seal()
    files = json.loads((cache.path / cc.MANIFEST).read_text())["files"]
    assert list(files) == [f"{aoti.AOTI_DIR}/{pkg.name}"]
    assert cache.verify() is None
    pkg.write_bytes(b"pockage")  # same size, new content and mtime
    assert cache.verify() == "corrupt"
    cache.seal()  # a changed file is hashed again, not taken from the old manifest
    assert cache.verify() is None


def test_reseal_only_a_sealed_folder(tmp_path):
    cache = cc.CompileCache(tmp_path / "k")
    (cache.path / aoti.AOTI_DIR).mkdir(parents=True)
    (cache.path / aoti.AOTI_DIR / "a.pt2").write_bytes(b"a")
    cache.reseal()
    assert not (cache.path / cc.MANIFEST).exists()
    cache.seal()
    (cache.path / aoti.AOTI_DIR / "b.pt2").write_bytes(b"b")
    cache.reseal()
    assert len(json.loads((cache.path / cc.MANIFEST).read_text())["files"]) == 2


@pytest.mark.slow
def test_second_process_loads_the_packages_and_matches_eager(tmp_path, tiny_model_dir):
    """The whole ``speed: compile`` preset on the CPU (fp32): packages built once, loaded by the next
    process without exporting again, output equal to the eager pipeline's."""
    first = _run(tmp_path, tiny_model_dir, "all")
    assert first["stats"] == {"exported": 3}, first
    assert sorted(n.split("-")[0] for n in first["mtimes"]) == ["decoder", "encoder", "vocoder"]
    second = _run(tmp_path, tiny_model_dir, "all")
    assert second["key_dir"] == first["key_dir"] and second["rebuilt"] is None
    assert second["stats"] == {"loaded": 3}, second  # no export, no torch.compile
    assert second["mtimes"] == first["mtimes"]
    for run in (first, second):
        assert run["diff"] <= 1e-4 * run["scale"] and run["diff_small"] <= 1e-4 * run["scale"]
    assert not any(p.name.startswith(".build") for p in Path(first["key_dir"]).rglob("*"))


@pytest.mark.slow
def test_changed_model_config_builds_anew_and_a_corrupt_package_is_rebuilt(tmp_path):
    from vaefix_pl.testing import write_tiny_audioldm2

    a = write_tiny_audioldm2(tmp_path / "a", seed=0)
    b = write_tiny_audioldm2(tmp_path / "b", seed=0, scaling_factor=0.5)  # only vae/config.json differs
    root = tmp_path / "cache"
    first = _run(root, a, "vocoder")
    assert first["stats"] == {"exported": 1} and first["diff"] <= 1e-4 * first["scale"]
    other = _run(root, b, "vocoder")
    assert other["key_dir"] != first["key_dir"] and other["stats"] == {"exported": 1}
    pkg = Path(first["key_dir"]) / aoti.AOTI_DIR / next(iter(first["mtimes"]))
    pkg.write_bytes(b"\x00garbage" * 100)
    third = _run(root, a, "vocoder")
    assert third["rebuilt"] == "corrupt" and third["stats"] == {"exported": 1}
    assert third["diff"] <= 1e-4 * third["scale"]


@pytest.mark.slow
def test_autocast_is_compiled_into_the_package(tmp_path):
    """Called inside a bf16 autocast region (as the pipeline calls its parts), the package runs the
    region's casts itself: same output and dtype as eager under autocast, not the float32 result."""
    torch.manual_seed(0)
    net = _RowNet().eval()
    part = aoti.StaticBatchPart(net, "net", 2, folder=tmp_path / "aoti")
    x = torch.randn(1, 4, 64)
    before = aoti.STATS.copy()
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = net(x)
            got = part(x)
        fp32 = net(x)
    assert [p.name for p in (tmp_path / "aoti").glob("*.pt2")] == ["net-2x4x64-float32-cpu-c-ac_bfloat16.pt2"]
    assert aoti.STATS["exported"] == before["exported"] + 1 and aoti.STATS["fallback"] == before["fallback"]
    assert got.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert (got.float() - fp32).abs().max() > 0  # bf16 math, not float32's


def test_packages_default_to_the_cpu_only(monkeypatch):
    monkeypatch.delenv(aoti.AOTI_ENV, raising=False)
    assert aoti.packages_enabled("cpu") and not aoti.packages_enabled("cuda")
    monkeypatch.setenv(aoti.AOTI_ENV, "1")
    assert aoti.packages_enabled("cuda") and aoti.packages_enabled("cpu")
    monkeypatch.setenv(aoti.AOTI_ENV, "0")
    assert not aoti.packages_enabled("cpu") and not aoti.packages_enabled("cuda")


def test_a_device_without_packages_compiles_and_builds_nothing(tmp_path, monkeypatch):
    """With packages and precompiled artefacts off a part goes to torch.compile, still padded to the batch."""
    monkeypatch.setenv(aoti.AOTI_ENV, "0")
    monkeypatch.setenv(aoti.PRECOMPILE_ENV, "0")
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, padding=1)).eval()
    calls = []
    part = aoti.StaticBatchPart(net, "net", 4, tmp_path / "aoti")
    monkeypatch.setattr(part, "_compile_runner", lambda: lambda x: calls.append(x.shape) or net(x))
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(part(x), net(x))
    assert calls == [torch.Size([4, 4, 16])] and not (tmp_path / "aoti").exists()


@pytest.mark.cuda
@pytest.mark.skipif(
    os.environ.get("VAEFIX_AOTI") != "1",
    reason="packages are opt-in on CUDA (they crashed the process on torch 2.11)",
)
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cuda_pipeline_through_packages_matches_eager(tmp_path, tiny_model_dir, precision):
    """On the GPU: the whole ``compile`` preset through packages (bf16 autocast inside the graph,
    package loaded on the input's device), against the eager pipeline; a second load builds nothing."""
    from vaefix_pl.core.config import SPEED_PRESETS
    from vaefix_pl.core.reconstruct import Reconstructor

    def build():
        return Reconstructor.from_pretrained(
            tiny_model_dir, pad_frames_to=16, precision=precision, device="cuda"
        )

    lengths = torch.tensor([2400, 1600, 2560])
    wave = (torch.randn(3, 2560) * 0.1).cuda()
    eager = build()(wave, lengths).waveform
    cache = cc.compile_cache_for(tiny_model_dir, "cuda", precision, {"t": 1}, root=tmp_path)
    cache.activate(seal_at_exit=False)
    try:
        outs = []
        for _ in range(2):  # the second reconstructor loads what the first exported
            before = aoti.STATS.copy()
            rec = build()
            with torch.inference_mode():
                rec.optimize(**SPEED_PRESETS["compile"], batch_size=4)
                outs.append(rec(wave, lengths).waveform)
            new = {k: aoti.STATS[k] - before.get(k, 0) for k in aoti.STATS}
            assert new.get("fallback", 0) == 0, new
        assert new.get("exported", 0) == 0 and new["loaded"] == 3
    finally:
        cache.deactivate()
    tol = 0.05 if precision == "bf16" else 1e-3
    scale = eager.abs().max()
    for out in outs:
        assert out.device.type == "cuda" and (out - eager).abs().max() <= tol * scale


def test_precompile_only_with_a_folder_default_options_and_not_turned_off(tmp_path, monkeypatch):
    monkeypatch.delenv(aoti.PRECOMPILE_ENV, raising=False)
    net = _RowNet()
    assert aoti.StaticBatchPart(net, "n", 2, tmp_path)._can_precompile()
    assert not aoti.StaticBatchPart(net, "n", 2, None)._can_precompile()
    assert not aoti.StaticBatchPart(net, "n", 2, tmp_path, mode="max-autotune")._can_precompile()
    assert not aoti.StaticBatchPart(net, "n", 2, tmp_path, freeze=True)._can_precompile()
    monkeypatch.setenv(aoti.PRECOMPILE_ENV, "off")
    assert not aoti.StaticBatchPart(net, "n", 2, tmp_path)._can_precompile()


def _precompile_part(tmp_path, monkeypatch, built):
    """A StaticBatchPart on the precompile path whose 'compiler' is the eager forward (recorded in ``built``)."""
    monkeypatch.setenv(aoti.AOTI_ENV, "0")
    monkeypatch.delenv(aoti.PRECOMPILE_ENV, raising=False)
    net = _RowNet().eval()
    part = aoti.StaticBatchPart(net, "vocoder", 2, folder=tmp_path / "aoti")

    def fake_precompile(path, traced, x):
        built.append(path.name)
        path.write_bytes(b"artefact")
        return lambda traced, x: traced(x)

    monkeypatch.setattr(part, "_precompile", fake_precompile)
    part._compile_runner = lambda: pytest.fail("fell back to torch.compile")
    return net, part


def test_unloadable_precompiled_artefact_is_rebuilt_with_one_log_line(tmp_path, monkeypatch, caplog):
    built = []
    net, part = _precompile_part(tmp_path, monkeypatch, built)
    x = torch.randn(1, 4, 8)
    with torch.no_grad():  # the mode the part is called in below
        bad = part.package_path(torch.zeros(2, 4, 8), torch.contiguous_format, None, aoti.PRECOMPILED_SUFFIX)
    assert bad.name == "vocoder-2x4x8-float32-cpu-c.precompiled"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00not a pickle")
    before = aoti.STATS.copy()
    with caplog.at_level(logging.WARNING, logger="vaefix_pl.core.aoti"), torch.no_grad():
        torch.testing.assert_close(part(x), net(x))
        part(x)  # the same shape again: built once
    assert built == [bad.name] and bad.read_bytes() == b"artefact"
    assert aoti.STATS["rebuilt"] == before["rebuilt"] + 1
    assert aoti.STATS["precompiled"] == before["precompiled"] + 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and bad.name in lines[0] and "rebuilding" in lines[0]


def test_failed_precompile_falls_back_to_torch_compile_with_one_log_line(tmp_path, monkeypatch, caplog):
    net, part = _precompile_part(tmp_path, monkeypatch, [])
    monkeypatch.setattr(
        part, "_precompile", lambda *a: (_ for _ in ()).throw(RuntimeError("graph break\nmore"))
    )
    part._compile_runner = lambda: net.forward
    before = aoti.STATS["fallback"]
    with caplog.at_level(logging.WARNING, logger="vaefix_pl.core.aoti"), torch.no_grad():
        x = torch.randn(2, 4, 8)
        torch.testing.assert_close(part(x), net(x))
        part(x)  # the same shape again: no second attempt
    assert aoti.STATS["fallback"] == before + 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "vocoder" in lines[0] and "graph break" in lines[0] and "more" not in lines[0]


@pytest.mark.slow
def test_precompiled_artefacts_per_grad_mode_and_an_unsavable_one_still_runs(tmp_path, monkeypatch, caplog):
    """Its guards require the grad mode it was traced in: a part called with and without autograd
    keeps one artefact per mode (no guard failure, no rebuild); and when saving fails (full disk)
    the compiled function still runs, with one log line and nothing half-written left behind."""
    monkeypatch.setenv(aoti.AOTI_ENV, "0")
    monkeypatch.delenv(aoti.PRECOMPILE_ENV, raising=False)
    net = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1)).eval()
    folder = tmp_path / "aoti"
    x = torch.randn(2, 4, 16)
    part = aoti.StaticBatchPart(net, "n", 2, folder)
    before = aoti.STATS.copy()
    with torch.inference_mode():
        got = part(x)
    with torch.enable_grad():
        got_grad = part(x)
    with torch.no_grad():
        torch.testing.assert_close(got, net(x))
        torch.testing.assert_close(got_grad.detach(), net(x))
    assert sorted(p.name for p in folder.iterdir()) == [
        "n-2x4x16-float32-cpu-c-grad.precompiled",
        "n-2x4x16-float32-cpu-c.precompiled",
    ]
    assert (
        aoti.STATS["precompiled"] == before["precompiled"] + 2 and aoti.STATS["rebuilt"] == before["rebuilt"]
    )

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aoti.os, "replace", full_disk)
    other = aoti.StaticBatchPart(net, "m", 2, folder)
    with caplog.at_level(logging.WARNING, logger="vaefix_pl.core.aoti"), torch.no_grad():
        torch.testing.assert_close(other(x), net(x))
    assert [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
    assert not [p for p in folder.iterdir() if p.name.startswith("m-")]
    assert aoti.STATS["fallback"] == before["fallback"]
