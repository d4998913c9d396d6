"""Start-up wiring (issue 17): autotune policy through optimize/the module, compile cache keyed by the
model folder, fast loading of both vocoder geometries, `cache_main`, `batch_size: auto`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from vaefix_pl.core import autotune, fastload
from vaefix_pl.core import compile_cache as cc
from vaefix_pl.core.config import SPEED_PRESETS
from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.lightning.module import ReconstructionModule
from vaefix_pl.testing import write_tiny_geometry


@pytest.fixture
def as_if_cuda(monkeypatch):
    """The policy decides as for a CUDA device; records every (batch, requested) it was asked."""
    calls = []
    real = autotune.want_cudnn_benchmark

    def fake(batch_size, device="cuda", requested=None):
        calls.append((batch_size, requested))
        return real(batch_size, "cuda", requested)

    monkeypatch.setattr(autotune, "want_cudnn_benchmark", fake)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return calls


@pytest.fixture(scope="module")
def tiny48(tmp_path_factory):
    return write_tiny_geometry(tmp_path_factory.mktemp("t48") / "m", "audioldm_48k", seed=0)


@pytest.mark.parametrize(
    "batch, max_windows, requested, expected",
    [(64, None, None, False), (1, None, None, True), (8, None, None, True), (9, None, None, False),
     (64, 4, None, True), (None, None, None, False), (64, None, True, True), (1, None, False, False)],
)  # fmt: skip
def test_optimize_passes_the_batch_to_the_autotune_policy(
    tiny_model_dir, as_if_cuda, batch, max_windows, requested, expected
):
    rec = Reconstructor.from_pretrained(tiny_model_dir, max_windows=max_windows)
    torch.backends.cudnn.benchmark = False
    rec.optimize(vocoder_channels_last=False, cudnn_benchmark=requested, batch_size=batch)
    assert torch.backends.cudnn.benchmark is expected
    # the policy saw the items per model call: the batch capped by max_windows
    if batch is not None or requested is not None:
        want = min(n for n in (batch, max_windows, 10**9) if n is not None)
        assert as_if_cuda[-1] == (want if want < 10**9 else 1, requested)


def test_policy_off_leaves_a_users_global_flag(tiny_model_dir, as_if_cuda):
    rec = Reconstructor.from_pretrained(tiny_model_dir)
    torch.backends.cudnn.benchmark = True  # the user's own setting
    rec.optimize(vocoder_channels_last=False, batch_size=64)
    assert torch.backends.cudnn.benchmark is True


def test_presets_leave_autotuning_to_the_policy():
    assert all(p.get("cudnn_benchmark") in (None, False) for p in SPEED_PRESETS.values())
    assert SPEED_PRESETS["none"]["cudnn_benchmark"] is False


class _Trainer:
    def __init__(self, batch_size):
        self.datamodule = type("DM", (), {"batch_size": batch_size})()
        self.predict_dataloaders = None


@pytest.mark.parametrize("batch, expected", [(64, False), (1, True)])
def test_module_setup_decides_autotune_from_the_loader_batch(tiny_model_dir, as_if_cuda, batch, expected):
    module = ReconstructionModule(model=str(tiny_model_dir), speed="auto", metrics=[])
    module.configure_model()
    module._trainer = _Trainer(batch)
    module._device = torch.device("cuda", 0)  # the module's own gate; the models stay on the CPU
    module.on_predict_start()
    assert as_if_cuda == [(batch, None)]
    assert torch.backends.cudnn.benchmark is expected


def test_compile_cache_keyed_by_model_folder_and_sealed_after_first_batch(
    tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path / "c"))
    module = ReconstructionModule(model=str(tiny_model_dir), speed="compile", metrics=[])
    module.configure_model()
    caches = []
    try:
        for batch in (64, 8):
            cache = module._activate_compile_cache(SPEED_PRESETS["compile"], batch)
            caches.append(cache)
            assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.inductor_dir)
            meta = json.loads((cache.path / cc.META).read_text())
            assert meta["model_dir"] == str(tiny_model_dir.resolve())
            assert meta["settings"]["batch_size"] == batch and meta["precision"] == "fp32"
        assert caches[0].path != caches[1].path  # another batch (shape) is another key
        (caches[1].inductor_dir / "artefact").write_bytes(b"kernel")
        module._compile_cache = caches[1]
        module.on_predict_batch_end(None, None, 0)
        assert module._compile_cache is None and caches[1].verify() is None
        assert (caches[1].path / cc.MANIFEST).is_file()
    finally:
        for cache in reversed(caches):
            cache.deactivate()


def test_a_changed_narrow_conv_table_is_a_new_compile_cache_key(tiny_model_dir, tmp_path, monkeypatch):
    """The compiled graphs contain the narrow-conv forms: a package whose table differs (another
    measurement) must not load artefacts built with the old one."""
    from vaefix_pl.core import speed

    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path / "c"))
    module = ReconstructionModule(model=str(tiny_model_dir), speed="compile", metrics=[])
    module.configure_model()
    paths, metas = [], []
    for table in ({(32, 7): "fold2"}, {(32, 7): "phase4"}, {(32, 7): "phase4"}):
        monkeypatch.setitem(speed.NARROW_CONV_FORMS, "fp32", table)
        cache = module._activate_compile_cache(SPEED_PRESETS["compile"], 8)
        try:
            paths.append(cache.path)
            metas.append(json.loads((cache.path / cc.META).read_text())["settings"]["narrow_convs"])
        finally:
            cache.deactivate()
    assert paths[0] != paths[1] and paths[1] == paths[2]
    assert metas[0] == {"32x7": "fold2"} and metas[1] == {"32x7": "phase4"}


def test_speed_auto_adds_the_eager_rewrites_measured_faster_for_its_precision():
    from vaefix_pl.core.config import AUTO_BY_PRECISION, speed_settings

    fp32 = speed_settings("auto", "fp32")
    assert fp32 == {**SPEED_PRESETS["auto"], **AUTO_BY_PRECISION["fp32"]}
    assert fp32["attention_math"] and fp32["polyphase_dilated"] and fp32["narrow_convs"]
    assert speed_settings("auto", "bf16-mixed") == SPEED_PRESETS["auto"]  # a Lightning alias of bf16
    assert speed_settings("compile", "fp32") == SPEED_PRESETS["compile"]
    assert "compile" not in fp32 and fp32["cudnn_benchmark"] is None
    speed_settings("auto", "fp32")["attention_math"] = False  # a copy: the table is not changed
    assert speed_settings("auto", "fp32")["attention_math"] is True


def test_a_cold_compile_says_once_what_it_waits_for_and_where_the_cache_lives(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    """`speed: compile` with nothing compiled yet for its key: one line naming the wait and the
    cache folder; a run whose key folder is sealed (compiled before) starts silently."""
    import logging

    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(Reconstructor, "optimize", lambda self, **kw: self)  # no real compile here
    monkeypatch.setattr(
        cc, "environment_key", lambda device: {"device": "cuda", "gpu": "test"}
    )  # no GPU here
    lines = []
    for run in range(2):
        module = ReconstructionModule(model=str(tiny_model_dir), speed="compile", metrics=[])
        module.configure_model()
        module._trainer = _Trainer(4)
        module._device = torch.device("cuda", 0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vaefix_pl.pipeline.job"):
            module.on_predict_start()
        cache = module._compile_cache
        try:
            lines.append([r.getMessage() for r in caplog.records])
            if run == 0:
                (cache.inductor_dir / "artefact").write_bytes(b"kernel")
                module.on_predict_batch_end(None, None, 0)  # seals it, as after the first batch
        finally:
            cache.deactivate()
    assert len(lines[0]) == 1 and "compiling the models" in lines[0][0] and str(cache.path) in lines[0][0]
    assert lines[1] == []


def test_in_memory_models_skip_the_compile_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path / "c"))
    rec = Reconstructor.from_pretrained(tiny_model_dir)
    module = ReconstructionModule.from_reconstructor(rec, metrics=[])
    assert module._activate_compile_cache(SPEED_PRESETS["compile"], 8) is None
    assert not (tmp_path / "c").exists()


def test_fastload_builds_the_class_hifires_chooses(tiny48):
    from vaefix_pl.core.hifires import HiFiResVocoder, load_vocoder
    from vaefix_pl.core.nets import HiFiGAN

    ref = load_vocoder(tiny48 / "vocoder")
    got = fastload.load_vocoder(tiny48 / "vocoder", "cpu")
    assert type(ref) is HiFiResVocoder and type(got) is HiFiGAN and got.config.upsample_padding == "hifires"
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mel = torch.randn(1, 8, ref.config.model_in_dim)
    with torch.no_grad():
        assert torch.equal(ref(mel), got(mel))


def test_cache_main_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path))
    root = cc.cache_root()
    for key in ("aaa", "bbb"):
        (root / key / "inductor").mkdir(parents=True)
        (root / key / "inductor" / "x").write_bytes(b"1234")
        (root / key / cc.META).write_text(json.dumps({"precision": "bf16", "gpu": "H200"}))
    assert cc.cache_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "aaa" in out and "bbb" in out and "H200" in out
    assert cc.cache_main(["clear", "zzz"]) == 2
    assert "zzz" in capsys.readouterr().err
    assert cc.cache_main(["clear", "aaa"]) == 0
    assert not (root / "aaa").exists() and (root / "bbb").exists()
    assert cc.cache_main(["clear"]) == 0
    assert not root.exists()


def test_auto_loader_settings_follow_the_device(monkeypatch):
    from vaefix_pl.data.inputs import resolve_loader_settings
    from vaefix_pl.data.module import AudioDataModule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert resolve_loader_settings("auto", "auto", "cuda") == (64, 8)
    assert resolve_loader_settings("auto", "auto", "cpu") == (8, 2)
    assert resolve_loader_settings(3, 0, "cuda") == (3, 0)  # numbers pass through
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolve_loader_settings("auto", "auto", "cuda") == (64, 1)
    # ranks of one machine share its cores: 2 ranks on 16 cores take 7 workers each, 4 on 8 take 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_loader_settings("auto", "auto", "cuda") == (64, 7)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert resolve_loader_settings("auto", "auto", "cuda") == (64, 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert resolve_loader_settings("auto", "auto", "cuda") == (64, 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")

    dm = AudioDataModule(inputs=None, probe_seconds=0.5)
    dm.trainer = type("T", (), {"strategy": type("S", (), {"root_device": torch.device("cuda")})()})()
    dm.setup("predict")  # resolved from the trainer's device, before the loader is built
    assert dm.batch_size == 64 and dm.predict_dataloader().batch_size == 64
    dm = AudioDataModule(inputs=None, probe_seconds=0.5, batch_size=5)
    dm.setup("predict")
    assert dm.batch_size == 5 and dm.num_workers in (0, 1, 2)


def test_loader_keeps_about_eight_batches_in_flight(tmp_path):
    """With many workers each keeps one batch ready (8 workers: 8 pinned batches, not 32); with few,
    torch's default 2; none without workers. The loader built is the one configured."""
    from vaefix_pl.data.inputs import AudioInputs, prefetch_factor

    assert [prefetch_factor(w) for w in (0, 1, 2, 3, 4, 8, 16)] == [None, 2, 2, 2, 1, 1, 1]
    for i in range(3):
        sf.write(tmp_path / f"c{i}.wav", np.zeros(1600, dtype=np.float32), 16000)
    for workers, want in ((2, 2), (4, 1)):
        dm = AudioInputs(inputs=str(tmp_path), batch_size=1, num_workers=workers, pin_memory=False)
        dm.setup("predict")
        assert dm.predict_dataloader().prefetch_factor == want


def test_unwritable_compile_cache_does_not_stop_the_run(tiny_model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(blocker))
    module = ReconstructionModule(model=str(tiny_model_dir), speed="compile", metrics=[])
    module.configure_model()
    assert module._activate_compile_cache(SPEED_PRESETS["compile"], 64) is None


def test_configure_model_loads_onto_the_trainers_device(tiny_model_dir, monkeypatch):
    seen = []
    real = Reconstructor.from_config.__func__

    def spy(cls, config, device=None):
        seen.append(device)
        return real(cls, config, device)

    monkeypatch.setattr(Reconstructor, "from_config", classmethod(spy))
    module = ReconstructionModule(model=str(tiny_model_dir), metrics=[])
    strategy = type("S", (), {"root_device": torch.device("cpu")})()
    module._trainer = type("T", (), {"strategy": strategy})()
    module.configure_model()
    assert seen == [torch.device("cpu")]
    assert all(p.device.type == "cpu" for p in module.reconstructor.parameters())
