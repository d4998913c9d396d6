"""Meta-device loading gives exactly the modules and outputs of `from_pretrained`."""

import pytest
import torch

from vaefix_pl.core import fastload, nets
from vaefix_pl.testing import write_tiny_audioldm2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_audioldm2(tmp_path_factory.mktemp("tiny"))


def _reference(folder):
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    vae = AutoencoderKL.from_pretrained(
        str(folder / "vae"), use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
    ).eval()
    voc = SpeechT5HifiGan.from_pretrained(
        str(folder / "vocoder"), use_safetensors=True, local_files_only=True
    ).eval()
    return vae, voc


def test_same_state_and_outputs_as_from_pretrained(tiny):
    ref_vae, ref_voc = _reference(tiny)
    vae, voc = fastload.load_models(tiny, "cpu", fallback=False)
    # the project's own classes (core/nets.py) hold the libraries' weights and give their outputs
    assert type(vae) is nets.AutoencoderKL and type(voc) is nets.HiFiGAN
    assert not vae.training and not voc.training
    for ref, got in ((ref_vae, vae), (ref_voc, voc)):
        a, b = ref.state_dict(), got.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert b[k].dtype == torch.float32 and not b[k].is_meta
            assert torch.equal(a[k], b[k]), k
    torch.manual_seed(0)
    mel = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(
            vae.decode(vae.encode(mel).latent_dist.mode()).sample,
            ref_vae.decode(ref_vae.encode(mel).latent_dist.mode()).sample,
        )
        spec = mel[:, 0]
        assert torch.equal(voc(spec), ref_voc(spec))


def test_missing_mean_scale_buffers_get_the_model_init(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny / "vocoder", tmp_path / "vocoder")
    sd = load_file(str(tmp_path / "vocoder" / "model.safetensors"))
    sd.pop("mean"), sd.pop("scale")
    save_file(sd, str(tmp_path / "vocoder" / "model.safetensors"))
    voc = fastload.load_vocoder(tmp_path / "vocoder")
    assert torch.equal(voc.mean, torch.zeros(64)) and torch.equal(voc.scale, torch.ones(64))


def test_weight_norm_checkpoints_are_folded(tiny, tmp_path):
    """A checkpoint saved with weight norm applied (either spelling) loads to the same weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    ref = fastload.load_vocoder(tiny / "vocoder")
    sd = load_file(str(tiny / "vocoder" / "model.safetensors"))
    for spelling in (
        ("weight_g", "weight_v"),
        ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    ):
        out = dict(sd)
        for name in ("conv_pre", "conv_post"):
            w = out.pop(f"{name}.weight")
            g = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True) * 2.0
            out[f"{name}.{spelling[0]}"], out[f"{name}.{spelling[1]}"] = g, w * 3.0  # g*v/|v| == 2w
        d = tmp_path / spelling[0]
        shutil.copytree(tiny / "vocoder", d)
        save_file(out, str(d / "model.safetensors"))
        voc = fastload.load_vocoder(d)
        for name in ("conv_pre", "conv_post"):
            torch.testing.assert_close(getattr(voc, name).weight, 2.0 * getattr(ref, name).weight)


def test_mismatched_checkpoint_raises_or_falls_back(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny, tmp_path / "m")
    path = tmp_path / "m" / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(path))
    with pytest.raises(fastload.FastLoadError, match="diffusion_pytorch_model.safetensors"):
        fastload.load_vae(tmp_path / "m" / "vae")
    with pytest.raises(fastload.FastLoadError):
        fastload.load_models(tmp_path / "m", fallback=False)
