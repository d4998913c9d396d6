"""The loop a user writes by hand (what the original bug report did), as the whole-run baseline.

Loads the VAE (diffusers) and the vocoder (transformers) from a local folder and reconstructs one
file at a time, batch 1, float32, writing ``<name>.recon.wav``. No metrics, no repair, no checks.

    python benchmarks/seed_style.py MODEL_DIR OUT_DIR a.wav b.wav ...
"""

import sys
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from diffusers import AutoencoderKL
from transformers import SpeechT5HifiGan

model, out, files = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
dev = "cuda" if torch.cuda.is_available() else "cpu"
vae = AutoencoderKL.from_pretrained(model / "vae").to(dev).eval()
vocoder = SpeechT5HifiGan.from_pretrained(model / "vocoder").to(dev).eval()
sr, hop = vocoder.config.sampling_rate, 160
fb = torchaudio.functional.melscale_fbanks(
    513, 0, sr / 2, vocoder.config.model_in_dim, sr, "slaney", "slaney"
).to(dev)
out.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for f in files:
        x, _ = sf.read(f, dtype="float32")
        x = torch.from_numpy(x).to(dev)
        x = 0.5 * (x - x.mean()) / (x.abs().max() + 1e-8)
        n = x.shape[0] // (hop * 4) * (hop * 4)
        spec = torch.stft(
            x[:n], 1024, hop, 1024, torch.hann_window(1024, device=dev), return_complex=True
        ).abs()
        mel = torch.log(torch.clamp(spec.T @ fb, min=1e-5))[: n // hop][None, None]
        z = vae.encode(mel).latent_dist.mode() * vae.config.scaling_factor
        mel_hat = vae.decode(z / vae.config.scaling_factor).sample
        y = vocoder(mel_hat.squeeze(1))[0, :n]
        sf.write(out / (Path(f).stem + ".recon.wav"), y.float().cpu().numpy(), sr)
