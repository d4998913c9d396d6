"""Resume identity: what makes a recorded output the output of this input under these settings.

An item counts as done only when its source file (size, modification time) and the run's settings
fingerprint match what was recorded with it (see ``runs.tables.identity_mismatch``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from vaefix_pl.runs.files import jsonable


def file_identity(path: str | None) -> dict[str, Any]:
    """``{"src_size", "src_mtime_ns"}`` of an input file (``{}`` for probes or an unreadable path)."""
    if not path:
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"src_size": st.st_size, "src_mtime_ns": st.st_mtime_ns}


#: data settings that change the outputs (batching and workers do not)
_DATA_KEYS = ("seconds", "offset", "channel", "probe_seconds", "sample_rate")


def settings_fingerprint(pl_module: Any, datamodule: Any) -> str:
    """A short hash of everything that decides an item's outputs: the module's settings (model,
    reconstructor, repair chain, metrics) and the data's crop settings."""
    module = pl_module.settings() if hasattr(pl_module, "settings") else {}
    hp = dict(getattr(datamodule, "hparams", {}) or {})
    data = {k: hp.get(k) for k in _DATA_KEYS if k in hp}
    blob = json.dumps(jsonable({"module": module, "data": data}), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
