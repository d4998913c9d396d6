"""The helpers that several layers share (issue 19): each defined once, checked against hand-computed values
or the standard library."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vaefix_pl.core import metric_names as names
from vaefix_pl.core.config import ReconstructorConfig
from vaefix_pl.core.errors import ModelError, SettingsError, exception_line
from vaefix_pl.core.lengths import full_lengths
from vaefix_pl.core.utils import format_number, jsonable, sha256_file


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (math.nan, "—"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (3, "3"),
        (True, "1"),
        (0.5, "0.5"),
        (2.5e-05, "2.500e-05"),
        (12345.6, "1.235e+04"),
        (0.0, "0"),
        (np.float32(1.5), "1.5"),
        ("x", "x"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_number_missing_text():
    assert format_number(None, missing="nan") == format_number(math.nan, missing="nan") == "nan"


def test_jsonable_is_strict_json():
    value = {"a": torch.tensor([1.0, math.nan]), "b": np.float32(2.5), "p": Path("/x"), 1: (np.int64(3),)}
    out = jsonable(value)
    assert out == {"a": [1.0, None], "b": 2.5, "p": "/x", "1": [3]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert jsonable(torch.tensor(7)) == 7 and jsonable(object.__new__(object)).startswith("<object")


def test_sha256_file_matches_hashlib_across_blocks(tmp_path):
    data = np.random.default_rng(0).bytes(5 * 1024 * 1024 + 17)  # more than one 4 MiB block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, block=1000) == hashlib.sha256(data).hexdigest()


def test_exception_line():
    assert exception_line(ValueError("first\n  second")) == "ValueError: first"
    assert exception_line(ValueError("\n\n  late line")) == "ValueError: late line"
    assert exception_line(KeyError()) == "KeyError"


def test_full_lengths_is_the_one_validation():
    x = torch.zeros(3, 10)
    assert full_lengths(x, None).tolist() == [10, 10, 10]
    assert full_lengths(x, [0, 5, 10]).dtype == torch.long
    assert full_lengths(x, torch.tensor([1, 2, 3]), "cpu").device.type == "cpu"
    with pytest.raises(ValueError, match=r"lengths must be \(3,\)"):
        full_lengths(x, torch.tensor([[1], [2], [3]]))
    with pytest.raises(ValueError, match=r"lie in \[0, 10\]"):
        full_lengths(x, [0, 11, 3])
    with pytest.raises(ValueError, match=r"must be \(B, N\)"):
        full_lengths(torch.zeros(10), None)


def test_metric_name_sets_are_registered():
    from vaefix_pl.metrics import available_metrics

    fast, perceptual = set(available_metrics("fast")), set(available_metrics("perceptual"))
    assert set(names.DEFAULT_METRICS) <= fast
    assert set(names.STAGE_METRICS) <= fast and set(names.BASELINE_METRICS) <= fast
    assert set(names.PERCEPTUAL_METRICS) == perceptual
    assert set(names.TABLE_ORDER) <= fast | perceptual
    assert names.HEADLINE_METRIC == names.TABLE_ORDER[0]


def test_export_config_from_keywords_and_config():
    from vaefix_pl.export.writer import _export_config

    c = _export_config(None, {"model": None, "framing": "hifigan", "pad_frames_to": 128})
    assert (c.model, c.framing, c.pad_frames_to) == (ReconstructorConfig().model, "hifigan", 128)
    assert _export_config("some/folder", {}).model == "some/folder"
    base = ReconstructorConfig(model="m", latent_mode="sample", seed=3)
    assert _export_config(base, {"seed": 4}) == ReconstructorConfig(model="m", latent_mode="sample", seed=4)
    with pytest.raises(TypeError, match="shard"):
        _export_config(None, {"shards": 3})
    with pytest.raises(SettingsError, match="window_seconds"):
        _export_config(ReconstructorConfig(window_seconds=10.0), {})


def test_user_vocoder_class_path_through_jsonargparse():
    from vaefix_pl.vocoders.base import VocoderError
    from vaefix_pl.vocoders.loading import instantiate_class

    lin = instantiate_class("torch.nn.Linear", {"in_features": 2, "out_features": 3})
    assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (3, 2)
    cases = [
        ("nonexistent_pkg.Vocoder", None, "cannot import"),
        ("torch.nn.Linear", {"in_features": "x", "out_features": 2}, "cannot build"),
        ("torch.nn.Linear", {"in_features": 2}, "out_features"),
        ("collections.OrderedDict", None, "subclass of Module"),
    ]
    for class_path, init_args, words in cases:
        with pytest.raises(VocoderError, match=words) as info:
            instantiate_class(class_path, init_args)
        assert "\n" not in str(info.value) and isinstance(info.value, ModelError)
