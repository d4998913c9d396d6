"""The tensor pipeline: lengths, batch independence, determinism, scaling, health and precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from signals import all_kinds, formant_pulses, harmonic, noise

from vaefix_pl.core.frontend import LOG_MEL_FLOOR, LogMelFrontend
from vaefix_pl.core.reconstruct import Reconstructor


@pytest.fixture(scope="module")
def rec(tiny_model_dir) -> Reconstructor:
    return Reconstructor.from_pretrained(str(tiny_model_dir))


def _batch(signals: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in signals])
    x = torch.zeros(len(signals), int(lengths.max()))
    for i, s in enumerate(signals):
        x[i, : len(s)] = torch.from_numpy(s).float()
    return x, lengths


@pytest.mark.parametrize("n", [16000, 16037, 163840])
def test_output_length_equals_input_length(rec, n):
    out = rec(torch.from_numpy(harmonic(n)).float()[None])
    assert out.waveform.shape == (1, n)
    assert torch.isfinite(out.waveform).all()
    assert out.waveform.abs().sum() > 0
    assert out.latent.shape == (1, 8, 256, 16)
    assert out.mel.shape == out.mel_hat.shape == (1, 1, 1024, 64)


def test_mixed_lengths_are_trimmed_and_padding_is_zero(rec):
    sigs = [noise(16037, 1), harmonic(40000), formant_pulses(9000)]
    x, lengths = _batch(sigs)
    out = rec(x, lengths)
    assert out.waveform.shape == x.shape
    for i, m in enumerate(lengths.tolist()):
        assert torch.all(out.waveform[i, m:] == 0) and torch.all(out.reference[i, m:] == 0)
        assert out.waveform[i, :m].abs().amax() > 0
    assert out.frames.tolist() == [101, 250, 57]


@pytest.mark.parametrize("pad_frames_to", [1024, 4])
def test_batch_independence(tiny_model_dir, pad_frames_to):
    """An item alone == the same item among longer and shorter batch-mates (1e-4 relative)."""
    rec = Reconstructor.from_pretrained(str(tiny_model_dir), pad_frames_to=pad_frames_to)
    sigs = [harmonic(30000, seed=1), noise(16037, 2), formant_pulses(170000), all_kinds(5000)["chirp"]]
    x, lengths = _batch(sigs)
    together = rec(x, lengths)
    for i, s in enumerate(sigs):
        alone = rec(torch.from_numpy(s).float()[None])
        a, b = alone.waveform[0], together.waveform[i, : len(s)]
        rel = (a - b).norm() / a.norm()
        assert rel < 1e-4, (i, pad_frames_to, rel.item())
        t = int(alone.canonical_frames[0])
        ma, mb = alone.mel_hat[0, :, :t], together.mel_hat[i, :, :t]
        assert (ma - mb).norm() / ma.norm() < 1e-4


def test_canonical_lengths(tiny_model_dir):
    rec = Reconstructor.from_pretrained(str(tiny_model_dir))
    lengths = torch.tensor([1, 160, 161, 163840, 163841, 400000])
    assert rec.covered_frames(lengths).tolist() == [1, 1, 2, 1024, 1025, 2500]
    assert rec.canonical_frames(lengths).tolist() == [1024, 1024, 1024, 1024, 2048, 3072]
    exact = Reconstructor.from_pretrained(str(tiny_model_dir), pad_frames_to=4)
    assert exact.canonical_frames(lengths).tolist() == [4, 4, 4, 1024, 1028, 2500]
    with pytest.raises(ValueError, match="multiple of 4"):
        Reconstructor(exact.vae, exact.vocoder, pad_frames_to=6)


def test_matches_a_hand_written_upstream_pipeline(rec):
    """10.24 s clip: level step, tacotron log-mel cropped to 1024 frames, mode latent, decode, vocoder."""
    n = 163840
    x = torch.from_numpy(formant_pulses(n, seed=4) + 0.05).float()[None]
    out = rec(x)
    y = x - x.mean()
    y = y / (y.abs().max() + 1e-8) * 0.5
    mel = LogMelFrontend("tacotron")(y)[:, :, :1024]
    assert torch.allclose(out.mel, mel, atol=1e-6)
    with torch.no_grad():
        z = rec.vae.encode(mel).latent_dist.mode() * 0.75
        mel_hat = rec.vae.decode(z / 0.75).sample
        wav = rec.vocoder(mel_hat.squeeze(1))[:, :n]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(out.latent, z) < 1e-5
    assert rel(out.mel_hat, mel_hat) < 1e-4
    gain = 0.5 / ((x - x.mean()).abs().max() + 1e-8)
    assert rel(out.waveform, wav / gain) < 1e-4
    assert torch.allclose(out.reference, x - x.mean(), atol=1e-6)


def test_scaling_factor_is_applied_both_ways(tiny_model_dir):
    a = Reconstructor.from_pretrained(str(tiny_model_dir))
    b = Reconstructor(a.vae, a.vocoder, scaling_factor=2.0)
    x = torch.from_numpy(harmonic(20000)).float()[None]
    oa, ob = a(x), b(x)
    assert torch.allclose(ob.latent / 2.0, oa.latent / 0.75, atol=1e-6)
    assert torch.allclose(oa.waveform, ob.waveform, atol=1e-6)  # scaling cancels on decode


def test_mode_latent_is_deterministic_and_sample_is_seeded(tiny_model_dir, rec):
    x, lengths = _batch([harmonic(20000), noise(12000)])
    assert torch.equal(rec(x, lengths).waveform, rec(x, lengths).waveform)
    s1 = Reconstructor(rec.vae, rec.vocoder, latent_mode="sample", seed=1)
    s2 = Reconstructor(rec.vae, rec.vocoder, latent_mode="sample", seed=2)
    o1, o1b, o2 = s1(x, lengths), s1(x, lengths), s2(x, lengths)
    assert torch.equal(o1.latent, o1b.latent)
    assert not torch.allclose(o1.latent, o2.latent)
    assert not torch.allclose(o1.latent, rec(x, lengths).latent)
    alone = s1(x[1:, :12000])
    assert torch.allclose(alone.latent[0], o1.latent[1], atol=1e-5)


def test_nan_in_decoded_mel_is_counted_and_repaired(rec):
    def inject(module, inputs, output):
        output = output.clone()
        output[:, 0, 3:5, 10:20] = float("nan")
        output[:, 0, 7, 0] = float("inf")
        return output

    handle = rec.vae.decoder.register_forward_hook(inject)
    try:
        x, lengths = _batch([harmonic(20000), noise(20000)])
        out = rec(x, lengths)
    finally:
        handle.remove()
    h = out.health
    assert h["mel_hat_nan"].tolist() == [20, 20] and h["mel_hat_posinf"].tolist() == [1, 1]
    assert h["mel_hat_nonfinite"].tolist() == [21, 21]
    assert torch.isfinite(out.mel_hat).all() and torch.isfinite(out.waveform).all()
    assert out.mel_hat[0, 0, 3, 10].item() == pytest.approx(LOG_MEL_FLOOR)
    clean = rec(x, lengths)
    assert clean.health["mel_hat_nonfinite"].tolist() == [0, 0]
    assert clean.health["output_nonfinite"].tolist() == [0, 0]


def test_health_stats_are_float64_over_valid_frames(rec):
    x, lengths = _batch([harmonic(16000), noise(32000)])
    out = rec(x, lengths)
    for i, f in enumerate(out.frames.tolist()):
        valid = out.mel_hat[i, 0, :f].double()
        assert out.health["mel_hat_mean"][i].item() == pytest.approx(valid.mean().item(), rel=1e-6)
        assert out.health["mel_hat_std"][i].item() == pytest.approx(
            valid.std(unbiased=False).item(), rel=1e-5
        )
        assert out.health["mel_hat_min"][i].item() == pytest.approx(valid.min().item())
    assert out.health["mel_hat_mean"].dtype == torch.float64


@pytest.mark.parametrize("precision, vae_dtype, vocoder_dtype", [
    ("fp32", torch.float32, torch.float32),
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("fp16", torch.float32, torch.float16),  # the VAE is never run in float16
])  # fmt: skip
def test_precision_policy(tiny_model_dir, precision, vae_dtype, vocoder_dtype):
    rec = Reconstructor.from_pretrained(str(tiny_model_dir), precision=precision)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)

        return hook

    hooks = [
        rec.vae.decoder.conv_in.register_forward_hook(record("vae")),
        rec.vocoder.conv_pre.register_forward_hook(record("vocoder")),
    ]
    try:
        # an outer float16 autocast (e.g. a Trainer's "16-mixed") must not reach the VAE either
        with torch.autocast("cpu", dtype=torch.float16):
            out = rec(torch.from_numpy(harmonic(16000)).float()[None])
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"vae": vae_dtype, "vocoder": vocoder_dtype}
    assert all(p.dtype == torch.float32 for p in rec.vae.parameters())
    assert out.waveform.dtype == torch.float32 and torch.isfinite(out.waveform).all()


def test_bad_input_shapes_are_clear_errors(rec):
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        rec(torch.zeros(16000))
    with pytest.raises(ValueError, match="lengths"):
        rec(torch.zeros(2, 1000), torch.tensor([1000, 2000]))


@pytest.mark.cuda
def test_cuda_matches_cpu(tiny_model_dir, rec):
    gpu = Reconstructor.from_pretrained(str(tiny_model_dir), device="cuda")
    x, lengths = _batch([harmonic(20000), noise(16037)])
    a = rec(x, lengths)
    b = gpu(x.cuda(), lengths.cuda())
    assert b.waveform.is_cuda
    rel = (a.waveform - b.waveform.cpu()).norm() / a.waveform.norm()
    assert rel < 1e-2  # TF32 convolutions on the GPU


@pytest.mark.cuda
def test_cuda_forward_never_waits_for_the_device(tiny_model_dir, rec):
    """With host-side lengths the whole forward queues its work without one device synchronisation
    (sub-batch planning runs on the CPU), so the host can launch the next batch while this one runs.
    Mixed lengths: two canonical-length groups, one of them non-contiguous rows."""
    gpu = Reconstructor.from_pretrained(str(tiny_model_dir), device="cuda")
    x, lengths = _batch([harmonic(20000), noise(170000), formant_pulses(16037), harmonic(9000)])
    xg = x.cuda()
    ref = gpu(xg, lengths.cuda())  # warm-up, and the same call with device lengths
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gpu(xg, lengths)  # CPU lengths
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.waveform, ref.waveform, rtol=1e-4, atol=1e-6)  # cuDNN run-to-run
    torch.testing.assert_close(out.mel_hat, ref.mel_hat, rtol=1e-4, atol=1e-5)
    assert out.lengths.is_cuda and out.canonical_frames.tolist() == [1024, 2048, 1024, 1024]


@pytest.mark.cuda
def test_cuda_windowed_long_item_matches_cpu(tiny_model_dir, rec):
    """A 25 s item in 10.24 s windows on the GPU (window sub-batches, crossfades, per-item trims) against
    the same on the CPU, batched with a short item."""
    gpu = Reconstructor.from_pretrained(
        str(tiny_model_dir), device="cuda", window_seconds=10.24, max_windows=2
    )
    cpu = Reconstructor(rec.vae, rec.vocoder, rec.scaling_factor, window_seconds=10.24, max_windows=2)
    x, lengths = _batch([formant_pulses(400000, seed=3), harmonic(30000)])
    a = cpu(x, lengths)
    b = gpu(x.cuda(), lengths.cuda())
    for i, n in enumerate(lengths.tolist()):
        ref, got = a.waveform[i, :n], b.waveform[i, :n].cpu()
        assert torch.isfinite(got).all() and not b.waveform[i, n:].any()
        assert (ref - got).norm() / ref.norm() < 1e-2  # TF32 convolutions on the GPU


# ------------------------------------------------------------------------------ long items, windows
@pytest.fixture(scope="module")
def win(rec) -> Reconstructor:
    return Reconstructor(rec.vae, rec.vocoder, rec.scaling_factor, window_seconds=10.24, max_windows=2)


def test_windowing_leaves_items_up_to_one_window_bitwise_unchanged(rec):
    win = Reconstructor(rec.vae, rec.vocoder, rec.scaling_factor, window_seconds=10.24)
    x, lengths = _batch([harmonic(163840), noise(16037, 1), formant_pulses(9000)])
    a, b = rec(x, lengths), win(x, lengths)
    assert not win.windowed(lengths).any()
    assert torch.equal(a.waveform, b.waveform) and torch.equal(a.mel_hat, b.mel_hat)


def test_windowed_canonical_lengths_and_output_shapes(win):
    lengths = torch.tensor([1, 163840, 163841, 400000])
    assert win.windowed(lengths).tolist() == [False, False, True, True]
    # 1025 frames -> 2 windows (0, 924) spanning 1948; 2500 frames -> 3 windows spanning 2872
    assert win.canonical_frames(lengths).tolist() == [1024, 1024, 1948, 2872]
    x = torch.from_numpy(formant_pulses(400000, seed=3)).float()[None]
    out = win(x)
    assert out.waveform.shape == (1, 400000) and torch.isfinite(out.waveform).all()
    assert out.mel.shape == out.mel_hat.shape == (1, 1, 2872, 64)
    assert out.latent.shape == (1, 8, 718, 16)
    assert out.frames.tolist() == [2500]


def test_windowed_batch_independence_and_vocode_reproduces_the_waveform(win):
    """A long item alone == among batch-mates (its windows share sub-batches with theirs), and
    vocode(mel_hat) gives back the forward's waveform (the repair chain's mel step relies on it)."""
    sigs = [formant_pulses(200000, seed=1), harmonic(30000), noise(350000, 2)]
    x, lengths = _batch(sigs)
    together = win(x, lengths)
    for i, s in enumerate(sigs):
        alone = win(torch.from_numpy(s).float()[None])
        a, b = alone.waveform[0], together.waveform[i, : len(s)]
        assert ((a - b).norm() / a.norm()).item() < 1e-4, i
    with torch.inference_mode():
        again = win.vocode(together.mel_hat, lengths, together.gain)
    torch.testing.assert_close(again, together.waveform, atol=1e-6, rtol=1e-5)


def test_max_windows_bounds_every_model_call(win):
    seen = []
    handle = win.vae.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        x, lengths = _batch([formant_pulses(500000), noise(300000, 1), harmonic(20000), harmonic(21000)])
        win(x, lengths)
    finally:
        handle.remove()
    # 4 + 2 windows in sub-batches of 2, then the two short items (one canonical group) in one of 2
    assert seen == [2, 2, 2, 2] and max(seen) <= win.max_windows


# ----------------------------------------------------------------------------- CUDA out of memory
def _oom_above(monkeypatch, rec, limit: int) -> list[int]:
    """Make the VAE decoder raise CUDA OOM for sub-batches larger than ``limit``; record the sizes."""
    sizes: list[int] = []
    decode = rec.decode

    def fake(latent):
        sizes.append(latent.shape[0])
        if latent.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return decode(latent)

    monkeypatch.setattr(rec, "decode", fake)
    return sizes


@pytest.mark.parametrize("windowed", [False, True])
def test_out_of_memory_halves_the_sub_batch_and_gives_the_same_result(
    monkeypatch, caplog, tiny_model_dir, windowed
):
    kw = dict(window_seconds=10.24) if windowed else {}
    rec = Reconstructor.from_pretrained(str(tiny_model_dir), **kw)
    n = 250000 if windowed else 16000  # windowed: 2 windows per item, 10 windows
    sigs = [formant_pulses(n, seed=i) if i % 2 else harmonic(n, seed=i) for i in range(5)]
    x, lengths = _batch(sigs)
    expected = rec(x, lengths)
    sizes = _oom_above(monkeypatch, rec, 2)
    with caplog.at_level("WARNING", logger="vaefix_pl.core.reconstruct"):
        out = rec(x, lengths)
    # 5 items (or the first 5 of 10 windows: max_windows=None allows the batch's item count) -> OOM
    # -> 2 fits and is kept for the rest: 2, 2, 1 (or 2, 2, 2, 2, 2)
    assert sizes[0] == 5 and sizes[1:] == ([2] * 5 if windowed else [2, 2, 1])
    assert rec.oom_cap == 2
    assert "--data.batch_size 2" in caplog.text and "sub-batch of 5" in caplog.text
    # the un-split result, up to batch-size-dependent float summation (1e-4 as test_batch_independence)
    assert ((out.waveform - expected.waveform).norm() / expected.waveform.norm()).item() < 1e-4
    assert ((out.mel_hat - expected.mel_hat).norm() / expected.mel_hat.norm()).item() < 1e-4
    # the size that worked is kept: the next batch starts at 2 without a new OOM
    sizes.clear()
    rec(x, lengths)
    assert max(sizes) == 2


def test_out_of_memory_on_one_item_names_the_rows_and_what_to_try(monkeypatch, tiny_model_dir):
    from vaefix_pl.core.output import ItemOutOfMemoryError

    rec = Reconstructor.from_pretrained(str(tiny_model_dir))
    _oom_above(monkeypatch, rec, 0)
    x, lengths = _batch([harmonic(16000), noise(12000, 1), harmonic(20000)])
    with pytest.raises(ItemOutOfMemoryError, match=r"window_seconds.*bf16") as info:
        rec(x, lengths)
    assert info.value.rows == [0]
