"""Geometry table, config matching, and the geometry-driven log-mel against librosa/NumPy float64."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from scipy.signal import get_window
from signals import all_kinds

from vaefix_pl.core.frontend import LogMelFrontend
from vaefix_pl.core.geometry import (
    AUDIOLDM_16K,
    AUDIOLDM_48K,
    GEOMETRIES,
    KNOWN_CHECKPOINTS,
    ConfigTypeError,
    GeometryError,
    UnsupportedGeometry,
    match_geometry,
)
from vaefix_pl.core.melspec import log_mel, mel, mel_basis
from vaefix_pl.testing import geometry_configs


# ------------------------------------------------------------------------------------------ matching
@pytest.mark.parametrize("geometry", ["audioldm_16k", "audioldm_48k"])
@pytest.mark.parametrize("size", ["tiny", "full"])
def test_match_each_geometry(geometry, size):
    vae, voc = geometry_configs(geometry, size)
    g = match_geometry(vae, voc)
    assert g.name == geometry
    assert g.scaling_factor == vae["scaling_factor"]  # recorded from the config, not the table
    assert g.latent_channels == vae["latent_channels"]
    assert g.sample_size == vae["sample_size"]
    assert g.vae_levels == len(vae["block_out_channels"])
    assert g.hop == int(np.prod(voc["upsample_rates"])) and g.n_mels == voc["model_in_dim"]


def test_table_values():
    assert (
        AUDIOLDM_16K.sample_rate,
        AUDIOLDM_16K.n_fft,
        AUDIOLDM_16K.win_length,
        AUDIOLDM_16K.hop,
        AUDIOLDM_16K.n_mels,
        AUDIOLDM_16K.fmin,
        AUDIOLDM_16K.fmax,
        AUDIOLDM_16K.vae_down,
    ) == (16000, 1024, 1024, 160, 64, 0.0, 8000.0, 4)
    assert (
        AUDIOLDM_48K.sample_rate,
        AUDIOLDM_48K.n_fft,
        AUDIOLDM_48K.win_length,
        AUDIOLDM_48K.hop,
        AUDIOLDM_48K.n_mels,
        AUDIOLDM_48K.fmin,
        AUDIOLDM_48K.fmax,
        AUDIOLDM_48K.vae_down,
    ) == (48000, 2048, 2048, 480, 256, 20.0, 24000.0, 8)
    for g in GEOMETRIES.values():
        assert g.log_floor == 1e-5 and g.scaling_factor is None
        assert g.n_mels % g.vae_down == 0
        assert g.vae_levels_expected == {4: 3, 8: 4}[g.vae_down]
        assert g.frame_padding("tacotron") == g.n_fft // 2
        assert g.frame_padding("hifigan") == (g.n_fft - g.hop) // 2


@pytest.mark.parametrize("hub_id", sorted(KNOWN_CHECKPOINTS))
def test_known_checkpoint_configs_match(hub_id):
    """A config with each known checkpoint's recorded values matches its geometry and keeps its scaling."""
    known = KNOWN_CHECKPOINTS[hub_id]
    assert known.geometry in GEOMETRIES
    vae, voc = geometry_configs(known.geometry, "full")
    if known.scaling_factor is not None:
        vae["scaling_factor"] = known.scaling_factor
    if known.sample_size is not None:
        vae["sample_size"] = known.sample_size
    g = match_geometry(vae, voc)
    assert g.name == known.geometry
    assert g.scaling_factor == vae["scaling_factor"]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


def test_unsupported_geometry_is_one_line_listing_supported():
    vae, voc = geometry_configs("audioldm_16k", "full")
    voc.update(
        sampling_rate=22050,
        model_in_dim=80,
        upsample_rates=[8, 8, 2, 2],
        upsample_kernel_sizes=[16, 16, 4, 4],
    )
    with pytest.raises(UnsupportedGeometry) as info:
        match_geometry(vae, voc)
    msg = _one_line(info.value)
    assert msg.startswith("22050 Hz, 80 mels, hop 256")
    assert "16000 Hz/64 mels/hop 160" in msg and "48000 Hz/256 mels/hop 480" in msg
    assert isinstance(info.value, ValueError)


def test_mixed_geometry_is_unsupported():
    vae16, _ = geometry_configs("audioldm_16k", "tiny")
    _, voc48 = geometry_configs("audioldm_48k", "tiny")
    with pytest.raises(UnsupportedGeometry, match="VAE down 4"):
        match_geometry(vae16, voc48)


@pytest.mark.parametrize(
    ("part", "key", "value", "needle"),
    [
        ("vocoder", "upsample_rates", "abc", "'upsample_rates'"),
        ("vocoder", "upsample_rates", [5, 4, "2"], "'upsample_rates'"),
        ("vae", "block_out_channels", 5, "'block_out_channels'"),
        ("vocoder", "sampling_rate", 16000.0, "'sampling_rate'"),
        ("vocoder", "model_in_dim", True, "'model_in_dim'"),
        ("vae", "latent_channels", "8", "'latent_channels'"),
        ("vae", "scaling_factor", "0.4", "'scaling_factor'"),
        ("vae", "scaling_factor", float("nan"), "'scaling_factor'"),
        ("vae", "sample_size", "big", "'sample_size'"),
        ("vae", "in_channels", 3, "'in_channels'"),
        ("vocoder", "normalize_before", True, "'normalize_before'"),
    ],
)
def test_bad_config_values_name_the_key(part, key, value, needle):
    vae, voc = geometry_configs("audioldm_16k", "tiny")
    (vae if part == "vae" else voc)[key] = value
    with pytest.raises(ConfigTypeError) as info:
        match_geometry(vae, voc)
    assert needle in _one_line(info.value) and part in str(info.value)


@pytest.mark.parametrize("missing", ["scaling_factor", "block_out_channels"])
def test_missing_vae_keys(missing):
    vae, voc = geometry_configs("audioldm_16k", "tiny")
    del vae[missing]
    with pytest.raises(ConfigTypeError, match=missing):
        match_geometry(vae, voc)


def test_non_dict_configs():
    vae, voc = geometry_configs("audioldm_16k", "tiny")
    with pytest.raises(ConfigTypeError, match="vae config must be a JSON object"):
        match_geometry([vae], voc)
    with pytest.raises(GeometryError, match="vocoder config must be a JSON object"):
        match_geometry(vae, "vocoder.json")


# ---------------------------------------------------------------------------------------- front-end
def reference_mel(x: np.ndarray, g, framing: str) -> np.ndarray:
    """(N,) float64 -> (T, n_mels) linear mel from librosa filters, scipy Hann, np.pad reflect, np.fft."""
    pad = g.n_fft // 2 if framing == "tacotron" else (g.n_fft - g.hop) // 2
    xp = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    window = get_window("hann", g.n_fft, fftbins=True)
    n_frames = 1 + (len(xp) - g.n_fft) // g.hop
    frames = np.stack([xp[k * g.hop : k * g.hop + g.n_fft] * window for k in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1))
    basis = librosa.filters.mel(
        sr=g.sample_rate, n_fft=g.n_fft, n_mels=g.n_mels, fmin=g.fmin, fmax=g.fmax, dtype=np.float64
    )
    return mag @ basis.T


@pytest.mark.parametrize("g", [AUDIOLDM_48K, AUDIOLDM_16K], ids=lambda g: g.name)
def test_mel_basis_equals_librosa(g):
    ref = librosa.filters.mel(
        sr=g.sample_rate, n_fft=g.n_fft, n_mels=g.n_mels, fmin=g.fmin, fmax=g.fmax, dtype=np.float64
    )
    ours = mel_basis(g).numpy()
    assert ours.shape == (g.n_mels, g.n_fft // 2 + 1)
    assert np.abs(ours - ref).max() < 1e-12


@pytest.mark.parametrize("g", [AUDIOLDM_48K, AUDIOLDM_16K], ids=lambda g: g.name)
@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
def test_float64_log_parity(g, framing):
    n = g.sample_rate // 2 + 37  # not a multiple of the hop
    for name, x in all_kinds(n, 0).items():
        ours = log_mel(torch.from_numpy(x)[None], g, framing)
        assert ours.dtype == torch.float64
        assert ours.shape == (1, 1, g.num_frames(n, framing), g.n_mels), name
        ref = np.log(np.maximum(reference_mel(x, g, framing), 1e-5))
        err = np.abs(ours[0, 0].numpy() - ref).max()
        assert err <= 1e-8, (name, err)


@pytest.mark.parametrize("g", [AUDIOLDM_48K, AUDIOLDM_16K], ids=lambda g: g.name)
def test_float32_linear_parity(g):
    n = g.sample_rate // 2 + 11
    for name, x in all_kinds(n, 1).items():
        ours = mel(torch.from_numpy(x.astype(np.float32))[None], g, "tacotron")
        assert ours.dtype == torch.float32
        ref = reference_mel(x.astype(np.float32).astype(np.float64), g, "tacotron")
        peak = ref.max()
        if peak == 0:
            continue
        assert np.abs(ours[0].numpy().astype(np.float64) - ref).max() <= 1e-5 * peak, name


@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
def test_16k_matches_logmelfrontend(framing):
    x = torch.randn(2, 16000 + 123, dtype=torch.float64)
    ours = log_mel(x, AUDIOLDM_16K, framing)
    theirs = LogMelFrontend(framing)(x)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-12
    xf = x.float()
    assert (log_mel(xf, AUDIOLDM_16K, framing) - LogMelFrontend(framing)(xf)).abs().max().item() < 1e-5


def test_batch_rows_are_independent():
    x = torch.randn(3, 24000, dtype=torch.float64)
    both = log_mel(x, AUDIOLDM_48K)
    for i in range(3):
        assert (both[i : i + 1] - log_mel(x[i : i + 1], AUDIOLDM_48K)).abs().max().item() < 1e-12


def test_too_short_input_is_refused():
    with pytest.raises(ValueError, match="needs more than 1024"):
        log_mel(torch.zeros(1, 1024), AUDIOLDM_48K, "tacotron")
