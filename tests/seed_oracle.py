"""The seed report's NumPy/SciPy repair functions, ported as the reference oracle for ``vaefix_pl.repair.chain``.

Source: ``shared/seed/000_15b7d19d4b0f9d1b.txt``, sections 阶段1 (``safe_normalize_mel``), 阶段2
(``simple_safe_normalize``), 阶段3 (``advanced_audio_denoising``) and 参数调优建议 (the tunable values).
The code is the seed's, line for line, with only these changes:

* ``safe_normalize_mel`` uses ``mean_val`` without defining it (the report shows an excerpt); it is
  ``np.mean(mel_np)``, defined next to ``std_val``.
* ``advanced_audio_denoising`` is split into its four numbered steps (one function each) plus the
  whole chain; the values the seed hard-codes and its tuning section names are keyword arguments with
  the seed's values as defaults.
* The steps work on a float64 copy of the input (the seed's step 1 writes into ``audio`` in place,
  which would change the caller's array; its input was the vocoder's float32 output).
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
from scipy.ndimage import median_filter

# -- 阶段1: 数值稳定性修复 ---------------------------------------------------------------------------


def safe_normalize_mel(mel_tensor, target_mean=-5.0, target_std=5.0):
    # 1. 强制使用float64进行计算避免溢出
    mel_np = mel_tensor.detach().cpu().numpy().astype(np.float64)

    # 2. 检查并修复无效值
    if not np.isfinite(mel_np).all():
        mel_np = np.nan_to_num(mel_np, nan=target_mean, posinf=0.0, neginf=-50.0)

    # 3. 安全的标准化检查
    std_val = np.std(mel_np)
    mean_val = np.mean(mel_np)  # not shown in the seed's excerpt
    if np.isfinite(std_val) and std_val > 1e-6:
        # 标准标准化
        normalized = (mel_np - mean_val) / std_val
        normalized = normalized * target_std + target_mean
    else:
        # 降级到min-max归一化
        min_val = np.min(mel_np)
        max_val = np.max(mel_np)
        if max_val > min_val:
            normalized = (mel_np - min_val) / (max_val - min_val)
            normalized = normalized * (2 * target_std) + (target_mean - target_std)
        else:
            normalized = np.full_like(mel_np, target_mean)

    # 4. 最终转换为float32
    return torch.from_numpy(normalized.astype(np.float32)).to(torch.float32)


# -- 阶段2: HiFiGAN兼容性优化 -----------------------------------------------------------------------


def simple_safe_normalize(mel_tensor, target_range=(-10, 10)):
    """专门为HiFiGAN优化的简单归一化"""
    mel_float32 = np.array(mel_tensor, dtype=np.float32)
    mel_float32 = np.nan_to_num(mel_float32, nan=0.0, posinf=0.0, neginf=-50.0)

    # min-max归一化到目标范围
    current_min = np.min(mel_float32)
    current_max = np.max(mel_float32)

    if current_max > current_min:
        normalized = (mel_float32 - current_min) / (current_max - current_min)
        normalized = normalized * (target_range[1] - target_range[0]) + target_range[0]
    else:
        normalized = np.full_like(mel_float32, (target_range[0] + target_range[1]) / 2)

    return torch.from_numpy(normalized).to(mel_tensor.device).to(torch.float32)


# -- 阶段3: 高级后处理降噪 (advanced_audio_denoising, one function per step) ---------------------------


def outlier_repair(audio, k=3.0, size=5):
    # 1. 3-sigma异常值检测
    audio = np.array(audio, dtype=np.float64)
    std_audio = np.std(audio)
    mean_audio = np.mean(audio)
    threshold = k * std_audio

    outliers = np.abs(audio - mean_audio) > threshold
    if np.any(outliers):
        # 使用中值滤波修复异常值
        audio_median = median_filter(audio, size=size)
        audio[outliers] = audio_median[outliers]
    return audio


def fades(audio, fade_len=1024):
    # 2. 平滑的渐变淡入淡出
    audio = np.array(audio, dtype=np.float64)
    fade_samples = min(fade_len, len(audio) // 8)
    if len(audio) > 2 * fade_samples:
        # 使用平方根函数实现更平滑的渐变
        fade_in = np.linspace(0, 1, fade_samples) ** 0.5
        audio[:fade_samples] *= fade_in

        fade_out = np.linspace(1, 0, fade_samples) ** 0.5
        audio[-fade_samples:] *= fade_out
    return audio


def ellip_bandpass(audio, sr=16000, low_freq=60, high_freq=7000):
    # 3. 椭圆滤波器带通滤波
    audio = np.array(audio, dtype=np.float64)
    low = low_freq / (sr / 2)
    high = high_freq / (sr / 2)

    # 椭圆滤波器提供更陡峭的衰减
    b, a = scipy.signal.ellip(5, 1, 60, [low, high], btype="band")
    audio = scipy.signal.filtfilt(b, a, audio)
    return audio


def soft_compression(audio, threshold=0.7, ratio=0.3):
    # 4. 软压缩减少峰值
    audio = np.array(audio, dtype=np.float64)
    audio = np.where(
        np.abs(audio) > threshold, np.sign(audio) * (threshold + (np.abs(audio) - threshold) * ratio), audio
    )
    return audio


def advanced_audio_denoising(
    audio, sr=16000, fade_len=1024, low_freq=60, high_freq=7000, threshold=0.7, ratio=0.3
):
    """The seed's whole waveform chain, in its order: outliers, fades, band-pass, compression."""
    audio = outlier_repair(audio)
    audio = fades(audio, fade_len=fade_len)
    audio = ellip_bandpass(audio, sr=sr, low_freq=low_freq, high_freq=high_freq)
    audio = soft_compression(audio, threshold=threshold, ratio=ratio)
    return audio
