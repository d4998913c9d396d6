"""core/nets.py against the libraries it replaces: diffusers ``AutoencoderKL`` and transformers
``SpeechT5HifiGan`` (and the transformers-based ``HiFiResVocoder``), same state dict in both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaefix_pl.core import fastload, nets
from vaefix_pl.testing import build_geometry_models, geometry_configs, write_tiny_geometry

ROOT = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when equal)."""
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def _pair(geometry: str, size: str):
    """(reference VAE, own VAE, reference vocoder, own vocoder), random weights (seed 0), eval mode."""
    vae_cfg, voc_cfg = geometry_configs(geometry, size)
    ref_vae, ref_voc = build_geometry_models(vae_cfg, voc_cfg, seed=0)
    vae = nets.AutoencoderKL(dict(ref_vae.config)).eval()
    voc = nets.HiFiGAN(voc_cfg).eval()
    vae.load_state_dict(ref_vae.state_dict(), strict=True)
    voc.load_state_dict(ref_voc.state_dict(), strict=True)
    return ref_vae, vae, ref_voc, voc


CASES = [("audioldm_16k", "tiny", 64), ("audioldm_48k", "tiny", 64), ("audioldm_16k", "full", 16)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request):
    geometry, size, frames = request.param
    return (*_pair(geometry, size), frames)


def test_state_dict_keys_and_shapes_identical_strict_both_ways(case):
    ref_vae, vae, ref_voc, voc, _ = case
    for ref, own in ((ref_vae, vae), (ref_voc, voc)):
        a, b = ref.state_dict(), own.state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape for k in a)
        # and back: the own module's state dict loads strictly into the library class
        assert not ref.load_state_dict(b, strict=True).missing_keys


def test_encode_decode_and_vocoder_match_the_libraries(case):
    ref_vae, vae, ref_voc, voc, frames = case
    n_mels = voc.config.model_in_dim
    torch.manual_seed(1)
    mel = torch.randn(2, 1, frames, n_mels) * 2 - 5
    with torch.no_grad():
        ref_post, post = ref_vae.encode(mel).latent_dist, vae.encode(mel).latent_dist
        assert _rel(ref_post.mean, post.mean) <= 1e-5
        assert _rel(ref_post.logvar, post.logvar) <= 1e-5
        assert _rel(ref_post.std, post.std) <= 1e-5
        assert torch.equal(post.mode(), post.mean)
        z = ref_post.mean
        assert _rel(ref_vae.decode(z).sample, vae.decode(z).sample) <= 1e-5
        assert _rel(ref_vae(mel).sample, vae(mel).sample) <= 1e-5
        spec = mel[:, 0]
        ref_wav, wav = ref_voc(spec), voc(spec)
        assert wav.shape == ref_wav.shape and _rel(ref_wav, wav) <= 1e-5
        one = voc(spec[0])  # un-batched (T, n_mels) -> (N,), as transformers
        assert one.shape == ref_voc(spec[0]).shape == (ref_wav.shape[1],)


def test_posterior_sample_draws_the_same_noise_for_a_seed(case):
    ref_vae, vae, _, voc, _ = case
    mel = torch.randn(3, 1, 16, voc.config.model_in_dim)
    with torch.no_grad():
        ref_post, post = ref_vae.encode(mel).latent_dist, vae.encode(mel).latent_dist
    a = ref_post.sample(generator=torch.Generator().manual_seed(7))
    b = post.sample(generator=torch.Generator().manual_seed(7))
    assert _rel(a, b) <= 1e-5
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    a = ref_post.sample(generator=gens)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    b = post.sample(generator=gens)
    assert _rel(a, b) <= 1e-5
    # the noise is really drawn: another seed gives another sample
    c = post.sample(generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(b, c)


def test_math_attention_matches_diffusers_attn_processor():
    from diffusers.models.attention_processor import AttnProcessor

    ref_vae, vae, *_ = _pair("audioldm_16k", "tiny")
    ref_vae.set_attn_processor(AttnProcessor())
    vae.set_attention_math(True)
    assert all(m.math for m in vae.attention_modules()) and len(vae.attention_modules()) == 2
    mel = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert _rel(ref_vae(mel).sample, vae(mel).sample) <= 1e-5


def test_bf16_autocast_matches_the_libraries():
    ref_vae, vae, ref_voc, voc = _pair("audioldm_16k", "tiny")
    mel = torch.randn(2, 1, 32, 64) - 4
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref_vae(mel).sample, vae(mel).sample
        wa, wb = ref_voc(mel[:, 0]), voc(mel[:, 0])
    assert a.dtype == b.dtype and _rel(a.float(), b.float()) <= 1e-5
    assert wa.dtype == wb.dtype and _rel(wa.float(), wb.float()) <= 1e-5


def test_hifires_padding_equals_core_hifires_and_differs_from_speecht5():
    from vaefix_pl.core.hifires import HiFiResVocoder

    _, _, ref_voc, voc = _pair("audioldm_48k", "tiny")
    assert isinstance(ref_voc, HiFiResVocoder) and voc.config.upsample_padding == "hifires"
    mel = torch.randn(2, 12, 256) - 4
    with torch.no_grad():
        ref, out = ref_voc(mel), voc(mel)
        assert out.shape == (2, 12 * 480) and _rel(ref, out) <= 1e-5
        stock = nets.HiFiGAN({**voc.config, "upsample_padding": None}).eval()
        stock.load_state_dict(voc.state_dict())
        assert stock(mel).shape != out.shape  # SpeechT5 padding: 480 T + 16


def test_config_attribute_access_and_defaults():
    two = {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}
    vae = nets.AutoencoderKL(
        two, in_channels=1, out_channels=1, block_out_channels=[8, 16], norm_num_groups=4
    )
    assert vae.config.block_out_channels == [8, 16] and vae.config["scaling_factor"] == 0.18215
    assert vae.config.get("sample_size") == 32 and vae.config.to_dict()["latent_channels"] == 4
    with pytest.raises(AttributeError):
        _ = vae.config.no_such_field
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    assert vae.encode(torch.randn(1, 1, 8, 8)).latent_dist.mean.shape == (1, 4, 4, 4)
    voc = nets.HiFiGAN(model_in_dim=4, upsample_initial_channel=8, upsample_rates=[2], upsample_kernel_sizes=[4],
                       resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])  # fmt: skip
    assert voc.config.normalize_before is True and voc.config.leaky_relu_slope == 0.1
    with pytest.raises(ValueError, match="upsample_padding"):
        nets.HiFiGAN(upsample_padding="other")
    with pytest.raises(nets.UnsupportedConfig, match="down_block_types"):
        nets.AutoencoderKL(down_block_types=["AttnDownEncoderBlock2D"])


def test_normalize_before_uses_the_mean_scale_buffers():
    _, _, ref_voc, voc = _pair("audioldm_16k", "tiny")
    ref_voc.config.normalize_before = voc.config.normalize_before = True
    mean, scale = torch.linspace(-1, 1, 64), torch.linspace(0.5, 2, 64)
    for m in (ref_voc, voc):
        m.mean.copy_(mean), m.scale.copy_(scale)
    mel = torch.randn(1, 10, 64)
    with torch.no_grad():
        assert _rel(ref_voc(mel), voc(mel)) <= 1e-5
        plain = nets.HiFiGAN({**voc.config, "normalize_before": False}).eval()
        plain.load_state_dict(voc.state_dict())
        assert not torch.allclose(plain(mel), voc(mel))


def test_unsupported_vae_falls_back_to_diffusers(tmp_path):
    """A VAE config nets cannot hold (attention in the down blocks) loads through diffusers, and only then."""
    from diffusers import AutoencoderKL

    cfg, _ = geometry_configs("audioldm_16k", "tiny")
    cfg.update(down_block_types=["AttnDownEncoderBlock2D"] * 3)
    folder = write_tiny_geometry(tmp_path / "m", "audioldm_16k")
    AutoencoderKL(**cfg).save_pretrained(folder / "vae", safe_serialization=True)
    with pytest.raises(fastload.FastLoadError, match="down_block_types"):
        fastload.load_vae(folder / "vae")
    vae, voc = fastload.load_models(folder, "cpu")
    assert type(vae) is AutoencoderKL and isinstance(voc, nets.HiFiGAN)


def test_loading_imports_neither_diffusers_nor_transformers(tmp_path):
    folder = write_tiny_geometry(tmp_path / "m", "audioldm_48k")
    code = (
        "import sys\n"
        "from vaefix_pl.core.models import load_audioldm2\n"
        f"m = load_audioldm2({str(folder)!r})\n"
        "m.vae.decode(m.vae.encode(__import__('torch').zeros(1, 1, 16, 256)).latent_dist.mode())\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & {'diffusers', 'transformers'})\n"
        "print(type(m.vae).__module__, type(m.vocoder).__name__, bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["vaefix_pl.core.nets", "HiFiGAN", "[]"]


def test_config_json_fields_all_reach_the_config(tmp_path):
    folder = write_tiny_geometry(tmp_path / "m", "audioldm_16k")
    vae, voc = fastload.load_models(folder, "cpu", fallback=False)
    for part, model in (("vae", vae), ("vocoder", voc)):
        raw = json.loads((folder / part / "config.json").read_text())
        assert all(model.config[k] == v for k, v in raw.items())


@pytest.mark.cuda
def test_cuda_parity_with_the_libraries():
    ref_vae, vae, ref_voc, voc = _pair("audioldm_16k", "full")
    for m in (ref_vae, vae, ref_voc, voc):
        m.cuda()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    mel = torch.randn(2, 1, 256, 64, device="cuda") - 4
    with torch.no_grad():
        ref_post, post = ref_vae.encode(mel).latent_dist, vae.encode(mel).latent_dist
        assert _rel(ref_post.mean, post.mean) <= 1e-5
        g = torch.Generator("cuda")
        a = ref_post.sample(generator=g.manual_seed(3))
        b = post.sample(generator=g.manual_seed(3))
        assert _rel(a, b) <= 1e-5
        assert _rel(ref_vae.decode(ref_post.mean).sample, vae.decode(ref_post.mean).sample) <= 1e-5
        assert _rel(ref_voc(mel[:, 0]), voc(mel[:, 0])) <= 1e-5
