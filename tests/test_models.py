"""Offline loading of the VAE + vocoder pair, config validation and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vaefix_pl.core.models import (
    ModelConfigError,
    ModelNotFoundError,
    load_audioldm2,
    normalize_precision,
    resolve_source,
)
from vaefix_pl.testing import write_tiny_audioldm2


def test_load_tiny_models_offline(tiny_model_dir):
    from vaefix_pl.core.nets import AutoencoderKL, HiFiGAN  # diffusers/transformers-compatible (test_nets.py)

    m = load_audioldm2(str(tiny_model_dir))
    assert isinstance(m.vae, AutoencoderKL) and isinstance(m.vocoder, HiFiGAN)
    assert m.scaling_factor == pytest.approx(0.75)  # read from the config, not hard-coded 0.411
    for part in (m.vae, m.vocoder):
        assert not part.training
        assert all(not p.requires_grad for p in part.parameters())
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert m.latent_channels == 8 and m.sample_size == 1024


def test_round_trip_weights_are_deterministic(tmp_path, tiny_model_dir):
    other = write_tiny_audioldm2(tmp_path / "again", seed=0)
    a, b = load_audioldm2(str(tiny_model_dir)), load_audioldm2(str(other))
    for pa, pb in zip(a.vocoder.state_dict().values(), b.vocoder.state_dict().values()):
        assert torch.equal(pa, pb)
    c = load_audioldm2(str(write_tiny_audioldm2(tmp_path / "seed1", seed=1)))
    assert not torch.equal(next(iter(a.vae.state_dict().values())), next(iter(c.vae.state_dict().values())))


def _fake_hf_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """Lay out a Hugging Face hub cache entry holding ``model_dir`` as revision ``main``."""
    commit = "0" * 40
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, root / "snapshots" / commit)


def test_hub_id_resolves_from_local_cache_without_network(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hf_cache(tmp_path / "hub", "cvssp/audioldm2", tiny_model_dir)
    m = load_audioldm2("cvssp/audioldm2", cache_dir=tmp_path / "hub")
    assert m.scaling_factor == pytest.approx(0.75)
    assert (m.path / "vae").is_dir()


def test_hub_id_missing_from_cache_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"hf download cvssp/audioldm2 --include"):
        resolve_source("cvssp/audioldm2", cache_dir=tmp_path / "empty")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="No model folder") as info:
        load_audioldm2(str(tmp_path / "nope" / "model"))
    assert "--model" in str(info.value)


def test_folder_without_vocoder(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir / "vae", tmp_path / "m" / "vae")
    with pytest.raises(ModelNotFoundError, match=r"missing subfolder\(s\) \['vocoder'\]"):
        load_audioldm2(str(tmp_path / "m"))


def _edit(tmp_path, tiny_model_dir, part, **fields) -> Path:
    dst = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, dst)
    cfg_path = dst / part / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(fields)
    cfg_path.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "part, fields, named",
    [
        ("vocoder", {"model_in_dim": 80}, "model_in_dim"),
        ("vocoder", {"upsample_rates": [8, 8, 2, 2]}, "upsample_rates"),
        ("vocoder", {"sampling_rate": 22050}, "sampling_rate"),
        ("vocoder", {"normalize_before": True}, "normalize_before"),
        ("vae", {"in_channels": 3}, "in_channels"),
        ("vae", {"out_channels": 2}, "out_channels"),
        ("vae", {"block_out_channels": [8, 16, 16, 16]}, "block_out_channels"),
    ],
)
def test_config_mismatch_names_the_field(tmp_path, tiny_model_dir, part, fields, named):
    folder = _edit(tmp_path, tiny_model_dir, part, **fields)
    with pytest.raises(ModelConfigError, match=named) as info:
        load_audioldm2(str(folder))
    assert part in str(info.value)


def test_only_safetensors_are_loaded(tmp_path, tiny_model_dir):
    dst = tmp_path / "bin_only"
    shutil.copytree(tiny_model_dir, dst)
    weights = dst / "vocoder" / "model.safetensors"
    weights.rename(dst / "vocoder" / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="only safetensors"):
        load_audioldm2(str(dst))


def test_precision_names():
    assert normalize_precision("bf16-mixed") == "bf16"
    assert normalize_precision("16-mixed") == "fp16"
    assert normalize_precision("32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        normalize_precision("int8")
