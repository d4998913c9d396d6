"""ReconstructionModule + AudioDataModule + ReconstructionWriter under trainer.predict, DDP and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from ddp import run_ddp_predict
from signals import formant_pulses, harmonic, noise

from vaefix_pl import AudioDataModule, ReconstructionModule, ReconstructionWriter
from vaefix_pl.cli.commands import main as vaefix
from vaefix_pl.data.inputs import collate_audio

ROOT = Path(__file__).resolve().parents[1]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _make_files(folder: Path, specs: list[tuple[str, int, int, int]]) -> dict[str, int]:
    """specs: (relative name, samples, sample rate, channels) -> {id: samples at 16 kHz}."""
    expected = {}
    for i, (name, n, sr, ch) in enumerate(specs):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        x = harmonic(n, f0=150 + 20 * i, sr=sr) if i % 2 else formant_pulses(n, seed=i, sr=sr)
        if ch == 2:
            x = np.stack([x, noise(n, i)], axis=1)
        sf.write(path, x, sr)
        expected[str(Path(name).with_suffix("").as_posix())] = int(round(n * 16000 / sr))
    return expected


def test_trainer_predict_writes_audio_metrics_and_summary(tmp_path, tiny_model_dir):
    expected = _make_files(
        tmp_path / "in",
        [("a.wav", 16000, 16000, 1), ("b/c.flac", 22050, 44100, 2), ("d.wav", 20037, 16000, 1)],
    )
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF-not-really")
    out = tmp_path / "out"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[ReconstructionWriter(out)],
    )
    module = ReconstructionModule(model=str(tiny_model_dir))
    result = trainer.predict(
        module,
        datamodule=AudioDataModule(str(tmp_path / "in"), batch_size=2, num_workers=0),
        return_predictions=False,
    )
    assert result is None
    rows = _read_csv(out / "metrics.csv")
    assert [r["id"] for r in rows] == sorted(list(expected) + ["broken"])
    for r in rows:
        if r["id"] == "broken":
            assert "broken.wav" in r["error"]
            continue
        n = expected[r["id"]]
        for tag in ("original", "recon"):
            x, sr = sf.read(out / f"{r['id']}.{tag}.wav")
            assert sr == 16000 and len(x) == n and np.isfinite(x).all()
        assert not (out / f"{r['id']}.post.wav").exists()
        assert np.isfinite(float(r["mel_distance"])) and r["health_output_nonfinite"] == "0"
    # original.wav is the level-restored input as the model saw it: the file minus its mean
    src, _ = sf.read(tmp_path / "in" / "a.wav")
    orig, _ = sf.read(out / "a.original.wav")
    assert np.abs(orig - (src - src.mean())).max() < 1e-5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_inputs"] == 4 and summary["n_ok"] == 3 and summary["n_failed"] == 1
    m = summary["metrics"]["mel_distance"]
    assert m["n"] == 3 and m["ci95_low"] <= m["mean"] <= m["ci95_high"]
    assert summary["settings"]["module"]["reconstructor"]["scaling_factor"] == pytest.approx(0.75)
    assert (out / "summary.md").read_text().strip()
    assert "broken" in (out / "errors.csv").read_text()
    assert not (out / ".parts").exists()


def test_post_processing_writes_and_scores_post_audio(tmp_path, tiny_model_dir):
    from vaefix_pl.repair.config import SEED_FINAL_SETTINGS

    out = tmp_path / "out"
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[ReconstructionWriter(out)],
    )  # fmt: skip
    module = ReconstructionModule(model=str(tiny_model_dir), postprocess=dict(SEED_FINAL_SETTINGS))
    trainer.predict(
        module, datamodule=AudioDataModule(None, batch_size=4, num_workers=0), return_predictions=False
    )
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == 7
    for r in rows:
        assert (out / f"{r['id']}.post.wav").is_file()
        assert float(r["post_mel_distance"]) != float(r["mel_distance"])
    summary = json.loads((out / "summary.json").read_text())
    assert "post_mel_distance" in summary["metrics"]
    assert summary["settings"]["module"]["postprocess"]["mel_mode"] == "minmax"


def test_writer_batch_thread_keeps_order_and_surfaces_failures(tmp_path, tiny_model_dir, monkeypatch):
    """Batches are written by the writer's own thread (so the loop does not wait on copies and I/O):
    with one batch allowed in flight every batch is still recorded, in order, and a failure in that
    thread fails the run instead of being lost."""
    out = tmp_path / "out"
    writer = ReconstructionWriter(out, max_pending_batches=1)
    seen: list[list[str]] = []
    original = ReconstructionWriter._write_batch

    def spy(self, staged, rank):
        seen.append(list(staged["ids"]))
        return original(self, staged, rank)

    monkeypatch.setattr(ReconstructionWriter, "_write_batch", spy)
    kw = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    L.Trainer(callbacks=[writer], **kw).predict(
        ReconstructionModule(model=str(tiny_model_dir)),
        datamodule=AudioDataModule(None, batch_size=2, num_workers=0, sort_by_duration=False),
        return_predictions=False,
    )
    ids = [r["id"] for r in _read_csv(out / "metrics.csv")]
    assert len(ids) == 7 and [len(b) for b in seen] == [2, 2, 2, 1]
    assert sorted(i for b in seen for i in b) == sorted(ids)
    assert writer.timing["loop_waited_on_writer_s"] >= 0.0

    def broken(self, staged, rank):
        raise OSError("disk on fire")

    monkeypatch.setattr(ReconstructionWriter, "_write_batch", broken)
    with pytest.raises(OSError, match="disk on fire"):
        L.Trainer(callbacks=[ReconstructionWriter(tmp_path / "out2")], **kw).predict(
            ReconstructionModule(model=str(tiny_model_dir)),
            datamodule=AudioDataModule(None, batch_size=4, num_workers=0),
            return_predictions=False,
        )


@pytest.mark.slow
def test_ddp_two_processes_exactly_once(tmp_path, tiny_model_dir):
    lengths = [4000, 9000, 16000, 5600, 12037, 7000, 20000, 3300, 11000]  # 9 files: ranks get 5 and 4
    out = run_ddp_predict(tmp_path, tiny_model_dir, lengths)
    rows = _read_csv(out / "metrics.csv")
    assert [r["id"] for r in rows] == sorted(f"clip{i}" for i in range(len(lengths)))
    for i, n in enumerate(lengths):
        for tag in ("original", "recon"):
            assert sf.info(out / f"clip{i}.{tag}.wav").frames == n
    writes = []
    logs = sorted((tmp_path / "out_writes").glob("rank*.log"))
    assert len(logs) == 2  # both ranks wrote
    for log in logs:
        writes += [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert len(writes) == len(set(writes)) == 2 * len(lengths)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["world_size"] == 2 and summary["n_ok"] == len(lengths)


def test_cli_reconstruct_mixed_formats(tmp_path, tiny_model_dir, capsys):
    expected = _make_files(tmp_path / "in", [("st44.wav", 44100, 44100, 2), ("mono16.flac", 24000, 16000, 1)])
    out = tmp_path / "out"
    files = [str(tmp_path / "in" / "st44.wav"), str(tmp_path / "in" / "mono16.flac")]
    rc = vaefix(["reconstruct", *files, "--model", str(tiny_model_dir), "--out", str(out),
                 "--accelerator", "cpu", "--num-workers", "0"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mel_distance" in printed and "2 clips reconstructed, 0 failed" in printed
    for i, n in expected.items():
        assert sf.info(out / f"{i}.recon.wav").frames == n
    assert len(_read_csv(out / "metrics.csv")) == 2


def test_cli_reconstruct_seconds_crops_and_pads(tmp_path, tiny_model_dir):
    _make_files(tmp_path / "in", [("long.wav", 40000, 16000, 1), ("short.wav", 8000, 16000, 1)])
    out = tmp_path / "out"
    vaefix(["reconstruct", str(tmp_path / "in"), "--seconds", "1.5", "--model", str(tiny_model_dir),
            "--out", str(out), "--accelerator", "cpu", "--num-workers", "0"])  # fmt: skip
    assert sf.info(out / "long.recon.wav").frames == 24000
    assert sf.info(out / "short.recon.wav").frames == 24000


def test_cli_reconstruct_window_flags_reach_the_module():
    """``vaefix reconstruct`` window/speed flags become the LightningCLI model settings."""
    from vaefix_pl.cli.commands import _reconstruct_parser, reconstruct_args

    ns = _reconstruct_parser().parse_args(
        ["x.wav", "--window-seconds", "5.12", "--window-overlap-seconds", "0.5", "--max-windows", "8",
         "--crossfade", "equal_power", "--speed", "compile"]
    )  # fmt: skip
    args = reconstruct_args(ns)
    for expected in ("--model.window_seconds=5.12", "--model.window_overlap_seconds=0.5",
                     "--model.max_windows=8", "--model.crossfade=equal_power", "--model.speed=compile"):  # fmt: skip
        assert expected in args
    assert "--model.window_seconds=null" in reconstruct_args(
        _reconstruct_parser().parse_args(["x.wav", "--window-seconds", "none"])
    )


def test_cli_reconstruct_long_file_in_windows(tmp_path, tiny_model_dir):
    """A 7 s file with 2.56 s windows through the CLI: full length back, finite, and the summary says
    which window settings ran."""
    _make_files(tmp_path / "in", [("long.wav", 112000, 16000, 1)])
    out = tmp_path / "out"
    rc = vaefix(["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out),
                 "--accelerator", "cpu", "--num-workers", "0", "--window-seconds", "2.56",
                 "--window-overlap-seconds", "0.5"])  # fmt: skip
    assert rc == 0
    x, _ = sf.read(out / "long.recon.wav")
    assert len(x) == 112000 and np.isfinite(x).all()
    settings = json.loads((out / "summary.json").read_text())["settings"]["module"]
    assert settings["window_seconds"] == pytest.approx(2.56)


def test_cli_predict_with_config_file(tmp_path, tiny_model_dir, capsys):
    _make_files(tmp_path / "in", [("x.wav", 16000, 16000, 1), ("y.wav", 30000, 16000, 1)])
    out = tmp_path / "out"
    rc = vaefix([
        "predict", "--config", str(ROOT / "configs" / "default.yaml"),
        "--data.inputs", str(tmp_path / "in"), "--model.model", str(tiny_model_dir),
        "--model.perceptual", "[]", "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--writer.output_dir", str(out),
    ])  # fmt: skip
    assert rc == 0
    assert sorted(r["id"] for r in _read_csv(out / "metrics.csv")) == ["x", "y"]
    assert (out / "x.recon.wav").is_file()


def test_cli_print_config_lists_every_option(capsys):
    assert vaefix(["predict", "--config", str(ROOT / "configs" / "default.yaml"), "--print_config"]) == 0
    printed = capsys.readouterr().out
    for key in ("pad_frames_to:", "postprocess:", "output_dir:", "sort_by_duration:", "strategy:"):
        assert key in printed
    # an inference config: no optimizer / lr_scheduler keys
    assert "optimizer:" not in printed and "lr_scheduler:" not in printed


@pytest.mark.parametrize("name", ["repair.yaml", "bf16.yaml", "multi_gpu.yaml"])
def test_shipped_configs_parse(name):
    assert vaefix(["predict", "--config", str(ROOT / "configs" / "default.yaml"),
                   "--config", str(ROOT / "configs" / name), "--print_config"]) == 0  # fmt: skip


def test_bad_metric_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown metrics"):
        ReconstructionModule(model="unused", metrics=["mel_distance", "nonsense"])


@pytest.mark.cuda
def test_predict_on_gpu(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, callbacks=[ReconstructionWriter(out)])
    module = ReconstructionModule(model=str(tiny_model_dir), precision="bf16")
    trainer.predict(
        module, datamodule=AudioDataModule(None, batch_size=7, num_workers=2), return_predictions=False
    )
    assert len(_read_csv(out / "metrics.csv")) == 7
    assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.cuda
def test_predict_step_never_waits_for_the_gpu(tiny_model_dir):
    """predict_step (reconstruction + the spectral metrics) with the host copy of the lengths that
    collate_audio adds queues all its GPU work without one device synchronisation, so the
    loop can fetch and launch the next batch while this one runs. Mixed lengths (the general path)."""
    from vaefix_pl.core.reconstruct import Reconstructor

    rec = Reconstructor.from_pretrained(str(tiny_model_dir), device="cuda")
    module = ReconstructionModule.from_reconstructor(
        rec, metrics=["mel_distance", "mrstft_distance", "lsd", "lag", "snr"]
    ).cuda()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([30000, 30000, 21000])
    wave = torch.randn(3, 30000, generator=g) * (torch.arange(30000)[None] < lengths[:, None])
    items = [
        {"id": i, "path": i, "waveform": w[:n], "error": None}
        for i, w, n in zip("abc", wave, lengths.tolist())
    ]
    batch = collate_audio(items)
    assert batch["host_lengths"] == [30000, 30000, 21000]
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    ref = module.predict_step(batch, 0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = module.predict_step(batch, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # same values (up to cuDNN's run-to-run differences)
    torch.testing.assert_close(out["audio"]["recon"], ref["audio"]["recon"], rtol=1e-4, atol=1e-6)
    for name, value in ref["metrics"]["recon"].items():
        torch.testing.assert_close(out["metrics"]["recon"][name], value, rtol=1e-3, atol=1e-3, msg=name)


def test_cli_reconstruct_with_seed_repair_config_scores_both(tmp_path, tiny_model_dir):
    _make_files(tmp_path / "in", [("v.wav", 20000, 16000, 1)])
    out = tmp_path / "out"
    rc = vaefix(["reconstruct", str(tmp_path / "in" / "v.wav"), "--config", str(ROOT / "configs" / "repair.yaml"),
                 "--model", str(tiny_model_dir), "--out", str(out), "--accelerator", "cpu", "--num-workers", "0"])  # fmt: skip
    assert rc == 0
    assert sf.info(out / "v.post.wav").frames == sf.info(out / "v.recon.wav").frames == 20000
    row = _read_csv(out / "metrics.csv")[0]
    assert np.isfinite(float(row["post_mel_distance"])) and np.isfinite(float(row["mel_distance"]))
    settings = json.loads((out / "summary.json").read_text())["settings"]["module"]["postprocess"]
    assert settings["mel_mode"] == "minmax" and tuple(settings["target_range"]) == (-8.0, 2.0)
    assert settings["low_hz"] == 60.0 and settings["high_hz"] == 7000.0 and settings["threshold"] == 0.7


def test_demo_uses_real_weights_when_given_and_says_so_otherwise(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    import vaefix_pl.cli.commands as cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(cli, "DEMO_TINY_DIR", tmp_path / "tiny")
    source, real = cli.resolve_demo_model(None)
    assert (
        not real
        and source == str(tmp_path / "tiny")
        and (tmp_path / "tiny" / "vae" / "config.json").is_file()
    )
    assert "REAL AudioLDM2 WEIGHTS NOT FOUND" in capsys.readouterr().out
    source, real = cli.resolve_demo_model(str(tiny_model_dir))
    assert real and source == str(tiny_model_dir)


def test_long_file_runs_in_windows_through_the_trainer(tmp_path, tiny_model_dir):
    """seconds=None keeps a 25 s file whole; the module's default 10.24 s windows process it, the
    writer gets full-length audio and the returned mels cover the windows' span."""
    (tmp_path / "in").mkdir()
    n = 16000 * 25 + 123
    sf.write(tmp_path / "in" / "long.wav", formant_pulses(n, seed=5), 16000)
    sf.write(tmp_path / "in" / "short.wav", harmonic(30000), 16000)
    module = ReconstructionModule(model=str(tiny_model_dir), return_mels=True, max_windows=2)
    assert module.hparams.window_seconds == 10.24 and module.hparams.window_overlap_seconds == 1.0
    seen = []

    class Grab(L.Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(outputs)

    out = tmp_path / "out"
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[ReconstructionWriter(out), Grab()],
    )  # fmt: skip
    trainer.predict(
        module,
        datamodule=AudioDataModule(str(tmp_path / "in"), seconds=None, batch_size=2, num_workers=0),
        return_predictions=False,
    )
    x, sr = sf.read(out / "long.recon.wav")
    assert sr == 16000 and len(x) == n and np.isfinite(x).all() and np.abs(x).max() > 0
    assert sf.info(out / "short.recon.wav").frames == 30000
    mels = seen[0]["mels"]
    row = seen[0]["ids"].index("long")
    assert mels["canonical_frames"][row].item() == 2872  # 3 windows: 2 * 924 + 1024 frames
    assert mels["mel_hat"].shape[2] == 2872 and torch.isfinite(mels["mel_hat"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["module"]["reconstructor"]["window_frames"] == 1024


def test_out_of_memory_on_one_item_names_its_id(tiny_model_dir, monkeypatch):
    from vaefix_pl.core.output import ItemOutOfMemoryError

    module = ReconstructionModule(model=str(tiny_model_dir), metrics=[])
    module.configure_model()

    def oom(latent):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(module.reconstructor, "decode", oom)
    x = torch.from_numpy(np.stack([harmonic(16000), noise(16000, 1)])).float()
    batch = {"waveform": x, "lengths": torch.tensor([16000, 12000]), "ids": ["a/one", "b/two"],
             "paths": ["a/one.wav", "b/two.wav"], "errors": []}  # fmt: skip
    with pytest.raises(ItemOutOfMemoryError, match=r"\['a/one'\].*window_seconds.*bf16"):
        module.predict_step(batch, 0)
