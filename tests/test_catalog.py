"""``vaefix models`` (offline catalogue of the family) and ``--model`` hub ids resolved from the HF cache."""

from __future__ import annotations

import pytest

from vaefix_pl.convert.catalog import list_models, models_main
from vaefix_pl.core.geometry import KNOWN_CHECKPOINTS
from vaefix_pl.core.models import ModelNotFoundError, load_audioldm2, resolve_source
from vaefix_pl.testing import write_tiny_geometry


def _fake_cache(tmp_path, hub_id, geometry):
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123abcd"
    write_tiny_geometry(snap, geometry)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    return tmp_path / "hub", snap


def test_list_models_reports_cache_presence_and_geometry(tmp_path, monkeypatch):
    hub, snap = _fake_cache(tmp_path, "cvssp/audioldm-m-full", "audioldm_16k")
    orig = hub / "models--haoheliu--audioldm_48k" / "snapshots" / "ff"
    orig.mkdir(parents=True)
    (orig / "audioldm_48k.pth").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    folder48 = write_tiny_geometry(tmp_path / "m48", "audioldm_48k")
    rows = {r["hub_id"]: r for r in list_models([folder48])}
    assert set(KNOWN_CHECKPOINTS) <= set(rows)
    m = rows["cvssp/audioldm-m-full"]
    assert m["present"] == str(snap)
    assert m["scaling_factor"] == 0.75  # the cached config's own value, not the recorded 0.9138
    assert rows["cvssp/audioldm2"]["present"] is None
    assert rows["haoheliu/audioldm_48k"]["present"] == str(orig)
    assert rows["haoheliu/audioldm_48k"]["format"] == "original"
    local = rows[str(folder48)]
    assert (local["geometry"], local["sample_rate"], local["n_mels"], local["hop"]) == (
        "audioldm_48k",
        48000,
        256,
        480,
    )
    assert models_main([]) == 0


def test_model_flag_takes_a_known_hub_id_from_the_cache(tmp_path, monkeypatch):
    hub, snap = _fake_cache(tmp_path, "haoheliu/some-48k-port", "audioldm_48k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_source("haoheliu/some-48k-port", cache_dir=hub) == snap
    models = load_audioldm2(str(snap))
    assert models.geometry.name == "audioldm_48k" and models.sample_rate == 48000


@pytest.mark.parametrize("hub_id", ["haoheliu/audioldm_48k", "declare-lab/tango"])
def test_original_format_hub_id_says_run_convert(hub_id):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_source(hub_id)
    msg = str(info.value)
    assert "\n" not in msg and "vaefix convert" in msg and hub_id in msg
    assert info.value.exit_code == 3
