"""Which stage loses what: stage-wise decomposition, numeric health per stage, and the user-mel mistake detector.

Three tools, all pure tensor code except the two command-line entry points at the end:

* :func:`decompose` runs one batch through four views of the pipeline and scores each against the input:

  (a) ``vocoder_ceiling`` -- the vocoder on the *true* log-mel of the input (what the vocoder alone loses),
  (b) ``vae_roundtrip`` -- mel -> VAE -> mel, no vocoder: the decoded mel's L1 distance to the true mel,
  (c) ``pipeline`` -- the full pipeline (front-end, VAE, vocoder),
  (d) ``repaired`` -- the full pipeline plus a :class:`~vaefix_pl.repair.chain.PostProcessChain` (when given).

  With the same waveform metrics on (a), (c), (d) side by side, ``c - a`` is what the VAE costs and
  ``d - c`` what the repair chain adds or removes.
* :func:`stage_health` / :func:`health_warnings`: per stage and item, dtype, float64 min/max/mean/std,
  NaN/Inf counts, fraction outside the trained log-mel range, constant-output detection, and warnings that
  name the probable cause (the original bug report's ``std=inf`` and constant ``[-4.000, -4.000]`` vocoder input among them).
* :func:`diagnose_mel`: given a mel a user computed with their own front-end, says which known mistake it
  matches (transposed, power, log10/dB, missing log, wrong sample rate or hop, wrong number of mel bins,
  float16 overflow), from its statistics and -- when the audio is given -- from our front-end on that audio.

Units: log-mels are natural-log mel magnitudes (nats), ``(B, 1, T, 64)``; waveforms ``(B, N)`` at 16 kHz.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.core.frontend import (
    SAMPLE_RATE,
    valid_mask,
)
from vaefix_pl.core.health import mel_health, tensor_health
from vaefix_pl.diagnose.health import HealthWarning, _item_dicts, health_warnings
from vaefix_pl.diagnose.stages import (
    CLICKS_WARN_PER_S,
    DEFAULT_STAGE_METRICS,
    HEALTH_STAGES,
    MEL_STEP_WARN,
    STAGE_PREFIX,
    STAGES,
    VAE_L1_OK,
)


# ==========================================================================================================
# stage-wise decomposition
# ==========================================================================================================
def masked_mel_error(estimate: Tensor, reference: Tensor, frames: Tensor) -> dict[str, Tensor]:
    """Per-item L1 / bias / max error of two ``(B, 1, T, M)`` log-mels over each item's first ``frames`` frames.

    Returns float64 ``(B,)`` tensors in nats: ``l1 = mean |est - ref|``, ``bias = mean (est - ref)``,
    ``max_abs = max |est - ref|`` (non-finite differences count as NaN).
    """
    mask = valid_mask(frames, estimate.shape[2])[:, None, :, None].expand_as(estimate)
    diff = estimate.double() - reference.double()
    count = mask.flatten(1).sum(1).clamp(min=1).double()
    zero = torch.zeros((), dtype=torch.float64, device=diff.device)
    l1 = torch.where(mask, diff.abs(), zero).flatten(1).sum(1) / count
    bias = torch.where(mask, diff, zero).flatten(1).sum(1) / count
    max_abs = torch.where(mask, diff.abs(), zero).flatten(1).amax(1)
    return {"l1": l1, "bias": bias, "max_abs": max_abs}


@dataclass
class Decomposition:
    """Result of :func:`decompose` for one batch.

    Attributes:
        ids: ``B`` item names.
        lengths: ``(B,)`` valid samples.
        metrics: stage -> metric name -> ``(B,)`` float64. Waveform stages (a), (c), (d) hold the
            waveform metrics plus ``input_mel_l1`` (the vocoder input's L1 distance to the true mel, nats);
            ``vae_roundtrip`` holds ``mel_l1``, ``mel_bias`` and ``mel_max_abs`` (nats).
        health: health stage -> ``B`` dicts from :func:`stage_health`.
        warnings: per item, the :class:`HealthWarning` list of every stage.
        audio: ``"original"``, ``"ceiling"``, ``"recon"`` and (with a chain) ``"post"``: ``(B, N)`` float32 at
            the input's level, zero beyond each length.
        output: the pipeline's :class:`~vaefix_pl.core.reconstruct.ReconstructionOutput`.
        mel_mode: the chain's ``mel_mode`` (``None`` without a chain).
    """

    ids: list[str]
    lengths: Tensor
    metrics: dict[str, dict[str, Tensor]]
    health: dict[str, list[dict[str, Any]]]
    warnings: list[list[HealthWarning]]
    audio: dict[str, Tensor]
    output: Any
    mel_mode: str | None = None
    #: the model's rate (Hz) of ``audio`` and ``lengths``
    sample_rate: int = SAMPLE_RATE

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if s in self.metrics]

    def value(self, stage: str, name: str, i: int) -> float:
        v = self.metrics.get(stage, {}).get(name)
        return float(v[i]) if v is not None else math.nan

    def verdict(self, i: int) -> dict[str, str]:
        """Per stage one line of text for item ``i`` (see :func:`stage_verdicts`)."""
        return stage_verdicts(self, i)

    def item(self, i: int) -> dict[str, Any]:
        """Everything about item ``i`` as plain JSON-able values."""
        return {
            "id": self.ids[i],
            "seconds": int(self.lengths[i]) / self.sample_rate,
            "stages": {s: {k: _num(v[i]) for k, v in m.items()} for s, m in self.metrics.items()},
            "health": {s: items[i] for s, items in self.health.items()},
            "warnings": [w.to_dict() for w in self.warnings[i]],
            "verdict": self.verdict(i),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per item in the writer's ``metrics.csv`` convention.

        Pipeline metrics unprefixed, repaired ``post_``, ceiling ``ceiling_``, VAE round trip ``vae_``;
        ``health_*`` from the pipeline's own health dict plus ``health_warnings`` / ``health_faults`` counts.
        """
        out = []
        health = {k: v.detach().cpu().tolist() for k, v in self.output.health.items()}
        for i, item_id in enumerate(self.ids):
            row: dict[str, Any] = {"id": item_id, "seconds": int(self.lengths[i]) / self.sample_rate}
            for stage, scores in self.metrics.items():
                for k, v in scores.items():
                    key = f"vae_{k}" if stage == "vae_roundtrip" else STAGE_PREFIX[stage] + k
                    row[key] = _num(v[i])
            for k, v in health.items():
                row[f"health_{k}"] = int(v[i]) if isinstance(v[i], bool) else v[i]
            row["health_warnings"] = sum(1 for w in self.warnings[i] if w.severity == "warn")
            row["health_faults"] = sum(1 for w in self.warnings[i] if w.severity == "fault")
            out.append(row)
        return out


def _num(x: Any) -> float | int | None:
    if isinstance(x, Tensor):
        x = x.item()
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    return x


def _stage_metrics(
    reference: Tensor, estimate: Tensor, lengths: Tensor, names: Sequence[str], sample_rate: int = SAMPLE_RATE
) -> dict:
    if not names:
        return {}
    from vaefix_pl.metrics import compute_metrics

    scores = compute_metrics(reference, estimate, lengths, list(names), sample_rate=sample_rate)
    return {k: v.double() for k, v in scores.items()}


def available_stage_metrics(names: Sequence[str] = DEFAULT_STAGE_METRICS) -> list[str]:
    """The subset of ``names`` that :mod:`vaefix_pl.metrics` provides (empty when it is not importable)."""
    try:
        from vaefix_pl.metrics import available_metrics
    except ImportError:
        return []
    have = set(available_metrics())
    return [n for n in names if n in have]


@torch.inference_mode()
def decompose(
    rec: Any,
    waveform: Tensor,
    lengths: Tensor | None = None,
    chain: Any | None = None,
    metrics: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> Decomposition:
    """Stage-wise decomposition of one batch (see the module docstring for stages (a)-(d)).

    Args:
        rec: a :class:`~vaefix_pl.core.reconstruct.Reconstructor`.
        waveform: ``(B, N)`` float at 16 kHz; ``lengths``: ``(B,)`` valid samples (``None``: all ``N``).
        chain: an optional :class:`~vaefix_pl.repair.chain.PostProcessChain` for stage (d); its mel step runs
            on the decoded mel and the vocoder is re-run on the result only when that step changed it, as
            :class:`~vaefix_pl.lightning.module.ReconstructionModule` does.
        metrics: waveform metric names for stages (a), (c), (d) (default: those of
            :data:`DEFAULT_STAGE_METRICS` that :mod:`vaefix_pl.metrics` provides).
        ids: item names (default ``item0``, ``item1``, ...).
    """
    b, n = waveform.shape
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=waveform.device)
    lengths = lengths.to(device=waveform.device, dtype=torch.long)
    names = available_stage_metrics() if metrics is None else list(metrics)
    rate = int(getattr(rec, "sample_rate", SAMPLE_RATE))  # the model's rate: metrics and seconds
    out = rec(waveform, lengths)
    frames = out.frames
    gain = out.gain

    # (a) the vocoder on the true mel, (c) the pipeline, (d) the pipeline + repair chain
    ceiling = rec.vocode(out.mel, lengths, gain)
    audio = {"original": out.reference, "ceiling": ceiling, "recon": out.waveform}
    stage_metrics: dict[str, dict[str, Tensor]] = {}
    stage_metrics["vocoder_ceiling"] = _stage_metrics(out.reference, ceiling, lengths, names, rate)
    stage_metrics["vocoder_ceiling"]["input_mel_l1"] = masked_mel_error(out.mel, out.mel, frames)["l1"]
    # (b) the VAE round trip on the mel alone (decoded mel after non-finite repair vs the true mel)
    vae = masked_mel_error(out.mel_hat, out.mel, frames)
    stage_metrics["vae_roundtrip"] = {f"mel_{k}": v for k, v in vae.items()}
    stage_metrics["pipeline"] = _stage_metrics(out.reference, out.waveform, lengths, names, rate)
    stage_metrics["pipeline"]["input_mel_l1"] = vae["l1"]

    mel_mode = None
    post_mel = None
    if chain is not None:
        mel_mode = getattr(chain, "mel_mode", None)
        post_in = out.waveform
        post_mel = out.mel_hat
        if mel_mode:
            post_mel = chain.process_mel(out.mel_hat, frames)
            if not torch.equal(post_mel, out.mel_hat):
                post_in = rec.vocode(post_mel, lengths, gain)
        post = chain(post_in, lengths)
        audio["post"] = post
        stage_metrics["repaired"] = _stage_metrics(out.reference, post, lengths, names, rate)
        stage_metrics["repaired"]["input_mel_l1"] = masked_mel_error(post_mel, out.mel, frames)["l1"]
        stage_metrics["repaired"]["mel_step_l1"] = masked_mel_error(post_mel, out.mel_hat, frames)["l1"]

    health = _health_of(out, lengths, gain, audio, post_mel)
    item_warnings: list[list[HealthWarning]] = [[] for _ in range(b)]
    for stage, items in health.items():
        for i, h in enumerate(items):
            item_warnings[i].extend(
                health_warnings(stage, h, mel_mode if stage.startswith("repaired") else None)
            )
    shift = stage_metrics.get("repaired", {}).get("mel_step_l1")
    for i in range(b if shift is not None else 0):
        if float(shift[i]) > MEL_STEP_WARN:
            item_warnings[i].append(
                HealthWarning(
                    "repaired_vocoder_input",
                    "warn",
                    f"the repair chain's mel step (mel_mode={mel_mode!r}) moves the vocoder input "
                    f"{float(shift[i]):.2f} nats (mean |change|) away from the decoded mel; with the right "
                    "front-end the decoded mel is already on the vocoder's scale and needs no renormalisation",
                )
            )
    for stage, scores in stage_metrics.items():
        clicks = scores.get("clicks_added_per_s")
        if clicks is None:
            continue
        for i in range(b):
            if float(clicks[i]) > CLICKS_WARN_PER_S:
                item_warnings[i].append(
                    HealthWarning(
                        stage,
                        "warn",
                        f"{float(clicks[i]):.2f} added clicks per second that the input does not explain",
                    )
                )
    ids = list(ids) if ids is not None else [f"item{i}" for i in range(b)]
    return Decomposition(ids, lengths, stage_metrics, health, item_warnings, audio, out, mel_mode, rate)


def _health_of(
    out: Any, lengths: Tensor, gain: Tensor, audio: dict[str, Tensor], post_mel: Tensor | None
) -> dict[str, list[dict[str, Any]]]:
    """Per-stage health dicts of a pipeline output (see :data:`HEALTH_STAGES`)."""
    n = out.waveform.shape[1]
    mask = valid_mask(lengths, n)
    frames = out.frames

    def mel_items(mel: Tensor) -> list[dict[str, Any]]:
        return _item_dicts(mel_health(mel, frames), mel.dtype)

    def wave_items(wave: Tensor) -> list[dict[str, Any]]:
        normed = (wave.double() * gain[:, None]).float()  # back at the level-normalised scale
        stats = tensor_health(normed, mask, (-1.0, 1.0))
        stats["peak"] = (normed.abs() * mask).amax(1).double()
        return _item_dicts(stats, wave.dtype)

    health: dict[str, list[dict[str, Any]]] = {}
    health["input"] = wave_items(out.reference)
    health["frontend_mel"] = mel_items(out.mel)
    lat_frames = (frames + 3) // 4
    lat_mask = valid_mask(lat_frames, out.latent.shape[2])[:, None, :, None]
    latent = _item_dicts(tensor_health(out.latent, lat_mask), out.latent.dtype)
    for i, h in enumerate(latent):  # the output's latent is repaired; its raw non-finite count is in health
        h["nonfinite"] = int(out.health["latent_nonfinite"][i])
    health["latent"] = latent
    # The raw decoded mel (before non-finite repair) is summarised by the pipeline itself.
    raw = {k[len("mel_hat_") :]: v for k, v in out.health.items() if k.startswith("mel_hat_")}
    health["decoded_mel"] = _item_dicts(raw, out.mel_hat.dtype)
    health["vocoder_input"] = mel_items(out.mel_hat)
    output = wave_items(audio["recon"])
    for i, h in enumerate(output):
        h["nonfinite"] = int(out.health["output_nonfinite"][i])
    health["output"] = output
    if "post" in audio and post_mel is not None:
        health["repaired_vocoder_input"] = mel_items(post_mel)
        health["repaired_output"] = wave_items(audio["post"])
    return health


def _status(warns: Sequence[HealthWarning]) -> str:
    if any(w.severity == "fault" for w in warns):
        return "FAULT"
    if warns:
        return "WARN"
    return "ok"


def _metric_text(d: Decomposition, stage: str, i: int) -> str:
    parts = []
    fmt = {
        "mel_distance": ("mel", "{:.3f} nats"),
        "mrstft_distance": ("mrstft", "{:.3f}"),
        "lsd": ("lsd", "{:.2f}"),
        "snr": ("snr", "{:+.1f} dB"),
        "si_sdr": ("si-sdr", "{:+.1f} dB"),
        "clicks_added_per_s": ("clicks", "+{:.2f}/s"),
    }
    for k, (label, f) in fmt.items():
        v = d.value(stage, k, i)
        if k in d.metrics.get(stage, {}):
            parts.append(f"{label} " + (f.format(v) if math.isfinite(v) else "nan"))
    if stage != "vocoder_ceiling" and "input_mel_l1" in d.metrics.get(stage, {}):
        parts.append(f"vocoder-input L1 {d.value(stage, 'input_mel_l1', i):.3f} nats")
    return "  ".join(parts)


def stage_verdicts(d: Decomposition, i: int) -> dict[str, str]:
    """One line per stage for item ``i`` (status, headline numbers, first warning) and an ``overall`` line.

    The overall line attributes the loss in mel distance (nats): the vocoder's ceiling (a), what the VAE
    adds on top of it (c - a), and what the repair chain adds (d - c); it names numeric faults first.
    """
    by_stage: dict[str, list[HealthWarning]] = {s: [] for s in STAGES}
    for w in d.warnings[i]:
        by_stage.setdefault(HEALTH_STAGES.get(w.stage, w.stage), []).append(w)
    lines: dict[str, str] = {}
    for stage in d.stages:
        warns = by_stage.get(stage, [])
        status = _status(warns)
        if stage == "vae_roundtrip":
            l1 = d.value(stage, "mel_l1", i)
            text = (
                f"mel L1 {l1:.3f} nats (bias {d.value(stage, 'mel_bias', i):+.3f}, "
                f"max {d.value(stage, 'mel_max_abs', i):.2f})"
            )
            if status == "ok" and not l1 <= VAE_L1_OK:  # the same threshold as report.html's badge
                status = "WARN"
                text += f"; a good VAE stays under {VAE_L1_OK:g} nats"
        else:
            text = _metric_text(d, stage, i)
        first = f" -- {warns[0].stage}: {warns[0].message}" if warns else ""
        lines[stage] = f"{status:<5} {text}{first}"

    faults = [w for w in d.warnings[i] if w.severity == "fault"]
    a = d.value("vocoder_ceiling", "mel_distance", i)
    c = d.value("pipeline", "mel_distance", i)
    pieces = []
    if faults:
        pieces.append(f"numeric fault at {faults[0].stage}: {faults[0].message.split(':')[0]}")
    if math.isfinite(a) and math.isfinite(c):
        vae = c - a
        worst = "the vocoder (its own ceiling)" if a >= vae else "the VAE round trip"
        pieces.append(
            f"mel distance {c:.3f} nats = vocoder ceiling {a:.3f} + VAE {vae:+.3f}; largest loss: {worst}"
        )
        if "repaired" in d.metrics:
            dd = d.value("repaired", "mel_distance", i)
            if math.isfinite(dd):
                effect = "worse" if dd > c + 1e-3 else ("better" if dd < c - 1e-3 else "no change")
                pieces.append(f"repair chain {dd - c:+.3f} nats ({effect})")
    else:
        pieces.append(f"VAE mel L1 {d.value('vae_roundtrip', 'mel_l1', i):.3f} nats (no waveform metrics)")
    lines["overall"] = "; ".join(pieces)
    return lines


def format_verdicts(d: Decomposition, i: int) -> str:
    """Multi-line text of item ``i``: one line per stage, then every warning, then the overall line."""
    v = d.verdict(i)
    out = [f"== {d.ids[i]} ({int(d.lengths[i]) / d.sample_rate:.2f} s) =="]
    for stage in d.stages:  # the warnings follow on their own lines, so not repeated after " -- "
        out.append(f"  {STAGES[stage]:<34} {v[stage].split(' -- ')[0]}")
    for w in d.warnings[i]:
        out.append(f"    ! {w}")
    out.append(f"  verdict: {v['overall']}")
    return "\n".join(out)
