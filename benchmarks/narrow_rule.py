"""Benchmark analysis: which narrow-conv form (``vaefix_pl.core.speed.NARROW_CONV_FORMS``) to keep per
shape, from the rows ``conv_shapes.py`` measures. Used by ``throughput.py`` and tested in tests/test_speed.py."""

from __future__ import annotations


def narrow_rule_from_rows(rows: list[dict], dtype: str, min_gain: float = 1.05) -> dict[tuple[int, int], str]:
    """``(channels, kernel) -> form`` from ``conv_shapes.py`` rows of one dtype ("bfloat16"/"float32"):
    the fastest ``foldF``/``poutF`` variant of each undilated shape, kept only when it beats the plain
    conv by ``min_gain``."""
    best: dict[tuple[int, int], tuple[float, str]] = {}
    plain: dict[tuple[int, int], float] = {}
    for r in rows:
        if r["dtype"] != dtype or r["d"] != 1:
            continue
        key = (int(r["C"]), int(r["k"]))
        name = r["variant"]
        if name == "w":
            plain[key] = r["ms"]
        elif name.startswith(("fold", "pout")):
            form = name.replace("pout", "phase")
            if key not in best or r["ms"] < best[key][0]:
                best[key] = (r["ms"], form)
    return {key: form for key, (ms, form) in best.items() if key in plain and plain[key] >= min_gain * ms}
