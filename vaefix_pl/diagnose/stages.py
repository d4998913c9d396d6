"""The one list of diagnosis stages, their ``metrics.csv`` prefixes and the warning thresholds (a leaf module but for the metric name sets: report/ and diagnose/ both read it)."""

from __future__ import annotations

from vaefix_pl.core.metric_names import STAGE_METRICS

#: Stages of the decomposition, in order, with their display titles.
STAGES: dict[str, str] = {
    "vocoder_ceiling": "(a) vocoder on the true mel",
    "vae_roundtrip": "(b) VAE round trip (mel only)",
    "pipeline": "(c) full pipeline",
    "repaired": "(d) full pipeline + repair chain",
}
#: Column prefix of each waveform stage in ``metrics.csv`` (the writer's convention: recon unprefixed).
STAGE_PREFIX: dict[str, str] = {"pipeline": "", "repaired": "post_", "vocoder_ceiling": "ceiling_"}
#: Waveform metrics scored on stages (a), (c), (d) (the one list is ``core.metric_names.STAGE_METRICS``).
DEFAULT_STAGE_METRICS: tuple[str, ...] = STAGE_METRICS
#: Health stages, in pipeline order, and the decomposition stage each belongs to.
HEALTH_STAGES: dict[str, str] = {
    "input": "vocoder_ceiling",
    "frontend_mel": "vocoder_ceiling",
    "latent": "vae_roundtrip",
    "decoded_mel": "vae_roundtrip",
    "vocoder_input": "pipeline",
    "output": "pipeline",
    "repaired_vocoder_input": "repaired",
    "repaired_output": "repaired",
}
#: Fraction of valid values outside the trained range above which a mel stage gets a warning.
OUT_OF_RANGE_WARN = 0.01
#: Normalised-level peak at which the vocoder's tanh output counts as saturated.
SATURATION_PEAK = 0.999
#: Mean change (nats) of the vocoder input by a repair chain's mel step above which stage (d) gets a warning.
MEL_STEP_WARN = 0.05
#: Added clicks per second above which a stage gets a warning.
CLICKS_WARN_PER_S = 0.5
#: Mean |decoded mel - true mel| (nats) of the VAE round trip above which stage (b) warns, in the console
#: and in report.html alike. A good VAE stays well under 1 nat; random or mismatched weights give several.
VAE_L1_OK = 1.0
