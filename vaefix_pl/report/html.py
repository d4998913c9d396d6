"""Figures and one self-contained ``report.html`` per run folder (``vaefix report OUT_DIR``).

Reads what :class:`~vaefix_pl.lightning.writer.ReconstructionWriter` or ``vaefix diagnose`` left in a folder
(``metrics.csv``, ``summary.json``, ``<id>.original.wav`` / ``.recon.wav`` / ``.post.wav``, and from
``vaefix diagnose`` also ``<id>.ceiling.wav`` and ``diagnosis.json``) and writes:

* ``figures/<id>.png`` per clip: the original and reconstructed log-mels (viridis, one colour scale), their
  difference (ColorBrewer RdBu, symmetric, colour-blind safe) and the waveforms overlaid (Okabe-Ito colours)
  with the clicks :func:`vaefix_pl.metrics.added_clicks` finds in the reconstruction marked; time in
  seconds, mel bands labelled in Hz. Built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot,
  no global backend switch, safe in threads and notebooks.
* ``report.html``: one file with everything inline (CSS, a few lines of JS, figures as base64 PNG): the
  summary with 95 % confidence intervals, the metrics table (click any column header to sort; a link
  ending in ``#sort=mel_distance`` or ``#sort=-snr`` opens it sorted), the stage decomposition (diagnose
  runs), health warnings, per clip the figure, the audio players and the verdicts, the failures and the
  settings.

Audio: the players link the run's own WAV files beside ``report.html`` (``embed_audio_clips`` > 0 embeds
the first clips as base64 16-bit WAV instead, ~430 kB per 10 s player). Figures are made for the first ``max_figures`` clips (default 100).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vaefix_pl.core.errors import OutputError
from vaefix_pl.core.utils import format_number as _fmt
from vaefix_pl.diagnose.stages import DEFAULT_STAGE_METRICS, VAE_L1_OK
from vaefix_pl.report.figures import clip_clicks, clip_figure, figure_png
from vaefix_pl.report.files import _confined, _read_json, _read_wav, _wav_rate, wav_base64  # noqa: F401
from vaefix_pl.runs.files import atomic_write_bytes, atomic_write_text
from vaefix_pl.runs.tables import read_metrics_csv

log = logging.getLogger(__name__)

DEFAULT_EMBED_AUDIO_CLIPS = 0  # players link the WAV files beside report.html: the page stays small
DEFAULT_MAX_FIGURES = 100
AUDIO_TAGS: dict[str, str] = {
    "original": "original",
    "recon": "reconstruction",
    "post": "repaired (repair chain)",
    "ceiling": "vocoder on the true mel",
}
#: Columns shown before "all columns" is ticked (when present).
HEADLINE_COLUMNS: tuple[str, ...] = (
    "seconds",
    *DEFAULT_STAGE_METRICS,
    "ceiling_mel_distance",
    "vae_mel_l1",
    "post_mel_distance",
    "post_clicks_added_per_s",
    "pesq",
    "stoi",
)


# ==========================================================================================================
def _metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    skip = {"id", "path", "error", "rank"}
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in skip or k in cols or k.startswith("health_") or k.endswith("_error"):
                continue
            if isinstance(v, (int, float)) or v is None:
                cols.append(k)
    return cols


def _metric_info() -> dict[str, dict[str, str]]:
    try:
        from vaefix_pl.metrics import metric_info
    except ImportError:
        return {}
    info = dict(metric_info())
    l1 = {"unit": "nats", "better": "lower", "description": "mean |mel - true mel| (natural-log mel)"}
    info.setdefault("mel_l1", l1)
    info.setdefault("input_mel_l1", l1)
    for name, better in (("lag", "near 0"), ("clicks_ref_per_s", "(input)")):  # no better/worse direction
        if name in info and not info[name].get("better"):
            info[name] = {**info[name], "better": better}
    return info


def _ci(s: Mapping[str, Any]) -> str:
    """``[low, high]``, or ``n = 1`` / ``-`` when there is no interval (one clip, or no spread)."""
    lo, hi = s.get("ci95_low"), s.get("ci95_high")
    if (
        isinstance(lo, (int, float))
        and isinstance(hi, (int, float))
        and math.isfinite(lo)
        and math.isfinite(hi)
    ):
        return f"[{_fmt(lo)}, {_fmt(hi)}]"
    return "n = 1" if s.get("n") == 1 else "-"


def _public(x: Any) -> Any:
    """Settings without private keys (``_instantiator`` and the like), recursively."""
    if isinstance(x, Mapping):
        return {k: _public(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_public(v) for v in x]
    return x


def _base_name(col: str) -> str:
    for prefix in ("post_", "ceiling_", "vae_"):
        if col.startswith(prefix):
            return col[len(prefix) :]
    return col


# ==========================================================================================================
# HTML
# ==========================================================================================================
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1320px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.small{font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef2f7;position:sticky;top:0;white-space:normal;max-width:110px;vertical-align:bottom}td.id,th.id{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#dde6f0}
th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}
.scroll{overflow:auto;max-height:430px;border:1px solid #ddd;display:inline-block;max-width:100%}
.scroll.short{max-height:260px}.wide{overflow-x:auto;max-width:100%}td.msg{text-align:left;white-space:normal}
details summary{cursor:pointer;margin:6px 0}
.extra{display:none}.showall .extra{display:table-cell}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:11.5px;font-weight:600;color:#fff}
.fault{background:#b2182b}.warn{background:#d08a00}.ok{background:#2166ac}
ul.warnings{margin:4px 0 4px 0;padding-left:20px}ul.warnings li{margin:2px 0}
.clip{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:14px 0}
.clip h3{margin:4px 0 6px}.clipbody{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.clipbody .fig{flex:0 1 880px;min-width:0}.clipbody .side{flex:1 1 340px;min-width:300px}
.clip img{max-width:100%;height:auto;display:block}
table.verdicts{font-size:12px;margin:8px 0}table.verdicts td{vertical-align:top}
.players{display:flex;flex-direction:column;gap:6px;margin:4px 0 8px}
.players figure{margin:0}.players figcaption{font-size:12px;color:#444}
audio{width:100%;max-width:420px;height:34px}
pre{background:#f3f3f3;border:1px solid #ddd;padding:8px;overflow:auto;max-height:360px;font-size:12px}
.banner{background:#fff4e5;border:1px solid #e6a23c;padding:8px 12px;border-radius:4px;margin:10px 0}
.verdict{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;margin:4px 0}
"""

_JS = """
function sortTable(th){
  const table=th.closest('table'), body=table.tBodies[0], idx=[...th.parentNode.children].indexOf(th);
  const asc=!th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
  th.classList.add(asc?'asc':'desc');
  const key=r=>{const c=r.children[idx], v=c.dataset.v; if(v===undefined) return c.textContent;
    const f=parseFloat(v); return isNaN(f)?null:f;};
  const rows=[...body.rows].sort((a,b)=>{const x=key(a), y=key(b);
    if(x===null&&y===null) return 0; if(x===null) return 1; if(y===null) return -1;
    const c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
    return asc?c:-c;});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
const m=decodeURIComponent(location.hash).match(/^#sort=(-?)(.+)$/);
if(m){const th=document.querySelector(`#metrics th[data-col="${CSS.escape(m[2])}"]`);
  if(th){sortTable(th); if(m[1]==='-') sortTable(th);}}
const all=document.getElementById('showall');
if(all) all.addEventListener('change',e=>document.getElementById('metrics').classList.toggle('showall',e.target.checked));
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _wrap_name(name: str) -> str:
    """Escaped column name that may wrap after underscores (keeps wide tables narrow)."""
    return "_<wbr>".join(_e(part) for part in name.split("_"))


def _health_label(key: str) -> str:
    """``items_with_nonfinite_mel_hat`` -> ``clips with a non-finite decoded mel``."""
    words = key.replace("_", " ").replace("items with", "clips with").replace("nonfinite", "non-finite")
    return words.replace("mel hat", "decoded mel")


def _anchor(item_id: str) -> str:
    return "clip-" + re.sub(r"[^A-Za-z0-9_-]+", "-", item_id)


def _summary_table(metrics: Mapping[str, Mapping[str, Any]], info: Mapping[str, Mapping[str, str]]) -> str:
    """Summary with 95 % CIs. Stage columns of a diagnose run (``ceiling_``, ``vae_``, ``input_mel_l1``) are
    folded into a collapsed "all metrics" table: the stage table shows them side by side."""
    if not metrics:
        return "<p class='muted'>no summary metrics</p>"
    staged = any(k.startswith(("ceiling_", "vae_", "post_")) for k in metrics)

    def is_main(name: str) -> bool:
        return not staged or not (
            name.startswith(("ceiling_", "vae_", "post_")) or name.endswith("input_mel_l1")
        )

    def table(names: Sequence[str]) -> str:
        head = (
            "<tr><th class='id'>metric</th><th>unit</th><th>better</th><th>mean</th><th>95% CI</th>"
            "<th>median</th><th>std</th><th>n</th><th>non-finite</th></tr>"
        )
        body = []
        for name in names:
            s = metrics[name]
            meta = info.get(_base_name(name), {})
            ci = _ci(s)
            body.append(
                f"<tr><td class='id' title='{_e(meta.get('description', ''))}'>{_e(name)}</td>"
                f"<td>{_e(meta.get('unit') or '-')}</td><td>{_e(meta.get('better') or '-')}</td>"
                f"<td data-v='{_e(s.get('mean'))}'><b>{_fmt(s.get('mean'))}</b></td><td>{ci}</td>"
                f"<td data-v='{_e(s.get('median'))}'>{_fmt(s.get('median'))}</td>"
                f"<td data-v='{_e(s.get('std'))}'>{_fmt(s.get('std'))}</td><td>{_fmt(s.get('n'))}</td>"
                f"<td>{_fmt(s.get('nan_count'))}</td></tr>"
            )
        return f"<table class='sortable'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"

    main = [k for k in metrics if is_main(k)]
    out = table(main)
    if len(main) < len(metrics):
        out += (
            f"<details><summary class='small'>all {len(metrics)} metrics (every stage)</summary>"
            f"{table(list(metrics))}</details>"
        )
    return out


_STAGE_ROWS = (
    ("(a) vocoder on the true mel", "ceiling_"),
    ("(b) VAE round trip (mel only)", "vae_"),
    ("(c) full pipeline", ""),
    ("(d) full pipeline + repair chain", "post_"),
)


def _cell(s: Mapping[str, Any] | None) -> str:
    if not s:
        return "<td>—</td>"
    return (
        f"<td data-v='{_e(s.get('mean'))}'><b>{_fmt(s.get('mean'))}</b><br>"
        f"<span class='muted small'>{_ci(s)}</span></td>"
    )


def _stage_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Mean [95 % CI] per stage and metric, when the run has the diagnose columns."""
    if not any(k.startswith(("ceiling_", "vae_", "post_")) for k in metrics):
        return ""  # a plain run: the summary table says it all
    cols = [m for m in DEFAULT_STAGE_METRICS if any(p + m in metrics for _, p in _STAGE_ROWS)]
    head = (
        "<tr><th class='id'>stage</th>"
        + "".join(f"<th>{_wrap_name(c)}</th>" for c in cols)
        + "<th title='L1 distance (nats) of the vocoder input (for (b): the decoded mel) to the true mel'>"
        "mel L1 to the true mel</th></tr>"
    )
    rows = []
    for label, prefix in _STAGE_ROWS:
        if prefix == "vae_":
            if "vae_mel_l1" not in metrics:
                continue  # a reconstruct run with the repair chain: (c) and (d) only
            cells = "".join("<td class='muted'>no audio</td>" for _ in cols) + _cell(
                metrics.get("vae_mel_l1")
            )
        else:
            if not any(prefix + c in metrics for c in cols):
                continue
            cells = "".join(_cell(metrics.get(prefix + c)) for c in cols) + _cell(
                metrics.get(prefix + "input_mel_l1")
            )
        rows.append(f"<tr><td class='id'>{_e(label)}</td>{cells}</tr>")
    return (
        "<h2>Stage decomposition</h2><p class='small muted'>Mean over clips [95% CI]. (a) is what the vocoder "
        "alone loses; (c) - (a) is what the VAE adds; (d) - (c) what the repair chain adds (negative: removes).</p>"
        f"<div class='wide'><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _metrics_table(
    rows: Sequence[Mapping[str, Any]], warn_counts: Mapping[str, tuple[int, int]], info
) -> str:
    ok_rows = [r for r in rows if not r.get("error")]
    cols = _metric_columns(ok_rows)
    headline = [c for c in HEADLINE_COLUMNS if c in cols] or cols[:10]
    ordered = headline + [c for c in cols if c not in headline]
    head = [
        "<th class='id' data-col='id'>id</th>",
        "<th data-col='health' title='faults / warnings'>health</th>",
    ]
    for c in ordered:
        meta = info.get(_base_name(c), {})
        better = f"({meta['better']} is better)" if meta.get("better") else ""
        tip = " ".join(x for x in (meta.get("description", ""), meta.get("unit", ""), better) if x)
        cls = "" if c in headline else " class='extra'"
        head.append(f"<th{cls} data-col='{_e(c)}' title='{_e(tip)}'>{_wrap_name(c)}</th>")
    body = []
    for r in ok_rows:
        faults, warns = warn_counts.get(r["id"], (0, 0))
        badge = (f"<span class='badge fault'>{faults} fault</span> " if faults else "") + (
            f"<span class='badge warn'>{warns} warn</span>" if warns else ""
        ) or "<span class='badge ok'>ok</span>"
        cells = [
            f"<td class='id'><a href='#{_anchor(r['id'])}'>{_e(r['id'])}</a></td>",
            f"<td data-v='{faults * 1000 + warns}'>{badge}</td>",
        ]
        for c in ordered:
            v = r.get(c)
            cls = "" if c in headline else " class='extra'"
            dv = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
            cells.append(f"<td{cls} data-v='{_e(dv)}'>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    toggle = (
        f"<label class='small'><input type='checkbox' id='showall'> show all {len(ordered)} columns</label>"
        if len(ordered) > len(headline)
        else ""
    )
    return (
        f"<p class='small muted'>Click a column header to sort (again: reverse). {toggle}</p>"
        f"<div class='scroll' id='metrics'><table class='sortable'><thead><tr>{''.join(head)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _warnings_table(all_warnings: Mapping[str, Sequence[Mapping[str, str]]]) -> str:
    rows = [(k, w) for k, ws in all_warnings.items() for w in ws]
    if not rows:
        return "<p>No health warnings.</p>"
    body = "".join(
        f"<tr><td class='id'><a href='#{_anchor(k)}'>{_e(k)}</a></td>"
        f"<td class='id'><span class='badge {_e(w['severity'])}'>{_e(w['severity'])}</span></td>"
        f"<td class='id'>{_e(w['stage'])}</td><td class='msg'>{_e(w['message'])}</td></tr>"
        for k, w in rows
    )
    return (
        "<div class='scroll short'><table class='sortable'><thead><tr><th class='id'>clip</th>"
        "<th class='id'>severity</th><th class='id'>stage</th><th class='id'>probable cause</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _warnings_html(warns: Sequence[Mapping[str, str]]) -> str:
    if not warns:
        return ""
    items = "".join(
        f"<li><span class='badge {_e(w['severity'])}'>{_e(w['severity'])}</span> <b>{_e(w['stage'])}</b>: "
        f"{_e(w['message'])}</li>"
        for w in warns
    )
    return f"<ul class='warnings'>{items}</ul>"


def _player(src: str, label: str) -> str:
    return (
        f"<figure><figcaption>{_e(label)}</figcaption>"
        f"<audio controls preload='metadata' src='{src}'></audio></figure>"
    )


def _clip_warnings(row: Mapping[str, Any], diag: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if diag is not None:
        return list(diag.get("warnings", []))
    from vaefix_pl.diagnose.health import row_warnings

    return [w.to_dict() for w in row_warnings(dict(row))]


def _stage_numbers(scores: Mapping[str, Any]) -> str:
    """Headline numbers of one stage: mel distance and added clicks, or the VAE's mel L1."""
    if "mel_l1" in scores:
        return f"mel L1 {_fmt(scores.get('mel_l1'))} nats (bias {_fmt(scores.get('mel_bias'))})"
    parts = []
    if "mel_distance" in scores:
        parts.append(f"mel {_fmt(scores.get('mel_distance'))}")
    if "mrstft_distance" in scores:
        parts.append(f"mrstft {_fmt(scores.get('mrstft_distance'))}")
    if "clicks_added_per_s" in scores:
        parts.append(f"clicks {_fmt(scores.get('clicks_added_per_s'))}/s")
    return " · ".join(parts)


def _verdict_table(diag: Mapping[str, Any] | None) -> str:
    """The per-stage verdict lines of a diagnose run as a small table (status badge, numbers)."""
    if not diag or not diag.get("verdict"):
        return ""
    from vaefix_pl.diagnose.stages import STAGES

    v = diag["verdict"]
    rows = []
    for stage, label in STAGES.items():
        if stage not in v:
            continue
        status, _, text = v[stage].partition(" ")
        text = text.strip().split(" -- ")[0]
        scores = diag.get("stages", {}).get(stage, {})
        l1 = scores.get("mel_l1")
        if status == "ok" and isinstance(l1, (int, float)) and not l1 <= VAE_L1_OK:
            status = "WARN"  # the stage's own checks passed, but the round trip lost too much
        cls = {"ok": "ok", "WARN": "warn", "FAULT": "fault"}.get(status, "warn")
        rows.append(
            f"<tr><td class='id'>{_e(label)}</td><td class='id'><span class='badge {cls}'>{_e(status)}</span></td>"
            f"<td class='msg'>{_e(_stage_numbers(scores) or text)}</td></tr>"
        )
    overall = f"<p class='small'><b>verdict:</b> {_e(v.get('overall', ''))}</p>"
    return f"<table class='verdicts'><tbody>{''.join(rows)}</tbody></table>{overall}"


def _model_is_full_size(model: str) -> bool | None:
    """Whether a local model folder holds AudioLDM2's full-size VAE (``None``: cannot tell)."""
    cfg = Path(model) / "vae" / "config.json"
    if not model or not cfg.is_file():
        return None
    try:
        channels = json.loads(cfg.read_text(encoding="utf-8")).get("block_out_channels")
    except (OSError, ValueError):
        return None
    return list(channels or []) == [128, 256, 512]


def _settings_banner(settings: Mapping[str, Any]) -> str:
    model = str(settings.get("model") or settings.get("module", {}).get("model") or "")
    full = settings.get("full_size_models")
    if full is None:
        full = _model_is_full_size(model)
    if full is False:
        return (
            "<div class='banner'><b>Tiny random-weight models.</b> The pipeline, metrics and files are real; the "
            "audio is not a meaningful reconstruction and the numbers say nothing about AudioLDM2.</div>"
        )
    return ""


def write_report(
    output_dir: str | os.PathLike,
    title: str | None = None,
    embed_audio_clips: int = DEFAULT_EMBED_AUDIO_CLIPS,
    max_figures: int = DEFAULT_MAX_FIGURES,
    filename: str = "report.html",
) -> Path:
    """Write ``figures/<id>.png`` and a self-contained ``report.html`` for a run folder; return its path.

    Args:
        output_dir: a folder written by the writer (``vaefix reconstruct/predict``) or ``vaefix diagnose``.
        embed_audio_clips: clips whose audio is embedded as base64 16-bit WAV; later clips link their WAVs.
        max_figures: clips that get a figure (in id order).
    """
    out = Path(output_dir)
    rows = read_metrics_csv(out / "metrics.csv")
    summary = _read_json(out / "summary.json") or {}
    diagnosis = _read_json(out / "diagnosis.json") or {}
    diag_by_id = {d["id"]: d for d in diagnosis.get("items", [])}
    info = _metric_info()
    ok_rows = [r for r in rows if not r.get("error")]

    all_warnings = {r["id"]: _clip_warnings(r, diag_by_id.get(r["id"])) for r in ok_rows}
    counts = {
        k: (sum(w["severity"] == "fault" for w in ws), sum(w["severity"] != "fault" for w in ws))
        for k, ws in all_warnings.items()
    }
    settings = summary.get("settings", {})
    model = settings.get("model") or settings.get("module", {}).get("model")
    title = title or f"vaefix report: {out.resolve().name}"
    timing = summary.get("timing", {})
    parts = [f"<h1>{_e(title)}</h1>"]
    parts.append(
        f"<p class='muted'>{summary.get('n_ok', len(ok_rows))} clips, {summary.get('n_failed', 0)} failed"
        + (
            f" ({summary['resume']['skipped_complete']} resumed from an earlier run)"
            if (summary.get("resume") or {}).get("skipped_complete")
            else ""
        )
        + (f"; model <code>{_e(model)}</code>" if model else "")
        + (f"; {_fmt(timing.get('audio_s'))} s of audio in {_fmt(timing.get('wall_s'))} s" if timing else "")
        + "</p>"
    )
    parts.append(_settings_banner(settings))
    parts.append("<h2>Summary</h2>" + _summary_table(summary.get("metrics", {}), info))
    parts.append("<h2>Metrics per clip</h2>" + _metrics_table(rows, counts, info))
    parts.append(_stage_table(summary.get("metrics", {})))

    health = summary.get("health", {})
    n_faults = sum(1 for f, _ in counts.values() if f)
    n_warns = sum(1 for _, w in counts.values() if w)
    parts.append(
        "<h2>Health</h2><p class='small'>"
        + "; ".join(f"{_e(_health_label(k))}: <b>{_e(v)}</b>" for k, v in health.items())
        + f"</p><p class='small'>{n_faults} clip(s) with numeric faults, {n_warns} with warnings.</p>"
        + _warnings_table(all_warnings)
    )

    parts.append("<h2>Clips</h2>")
    fig_dir = out / "figures"
    for k, r in enumerate(ok_rows):
        item_id = r["id"]
        waves = {tag: _read_wav(_confined(out, f"{item_id}.{tag}.wav")) for tag in AUDIO_TAGS}
        rate = _wav_rate(_confined(out, f"{item_id}.original.wav"))  # the model's rate (16 or 48 kHz)
        players = []
        for tag, label in AUDIO_TAGS.items():
            if waves[tag] is None:
                continue
            if k < embed_audio_clips:
                src = "data:audio/wav;base64," + wav_base64(waves[tag], rate)
            else:
                src = _e(quote(f"{item_id}.{tag}.wav"))
            players.append(_player(src, label))
        side = [f"<div class='players'>{''.join(players)}</div>" if players else ""]
        side.append(_verdict_table(diag_by_id.get(item_id)))
        side.append(_warnings_html(all_warnings.get(item_id, [])))
        fig_html = ""
        if k < max_figures and waves["original"] is not None and waves["recon"] is not None:
            clicks = clip_clicks(waves["original"], waves["recon"], rate)
            fig = clip_figure(
                waves["original"], waves["recon"], post=waves["post"], clicks=clicks, sample_rate=rate
            )  # no title: the section heading names the clip
            png = figure_png(fig)
            target = _confined(fig_dir, f"{item_id}.png")
            if target is not None:
                atomic_write_bytes(target, png)
            fig_html = (
                f"<img alt='{_e(item_id)}: log-mels, difference and waveforms' "
                f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
            )
        parts.append(
            f"<section class='clip' id='{_anchor(item_id)}'><h3>{_e(item_id)}</h3><div class='clipbody'>"
            f"<div class='fig'>{fig_html}</div><div class='side'>{''.join(side)}</div></div></section>"
        )

    failed = summary.get("failed") or [
        {"id": r["id"], "reason": r.get("error")} for r in rows if r.get("error")
    ]
    if failed:
        parts.append(
            "<h2>Failed</h2><ul>"
            + "".join(f"<li><b>{_e(f['id'])}</b>: {_e(f.get('reason'))}</li>" for f in failed)
            + "</ul>"
        )
    parts.append(
        "<h2>Settings</h2><details open><summary class='small'>summary.json settings and timing</summary><pre>"
        + _e(json.dumps(_public({"settings": settings, "timing": timing}), indent=2, default=str))
        + "</pre></details>"
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        + "\n".join(p for p in parts if p)
        + f"</main><script>{_JS}</script></body></html>"
    )
    target = out / filename
    if _confined(out, filename) is None:
        raise OutputError(f"{target}: not written (outside {out} or through a symbolic link)")
    atomic_write_text(target, page)
    return target
