"""``vaefix cache info|clear [KEY]``: the CLI's parser style over :func:`vaefix_pl.core.compile_cache.cache_main`."""

from __future__ import annotations

from collections.abc import Sequence

from vaefix_pl.cli.common import make_parser
from vaefix_pl.core.errors import SettingsError


def cache_main(argv: Sequence[str]) -> int:
    """List the ``speed: compile`` cache's entries, or delete one or all (imports no torch)."""
    from vaefix_pl.core.compile_cache import ENV_CACHE_DIR, cache_main, cache_root

    p = make_parser(
        "vaefix cache",
        f"The torch.compile cache of `speed: compile` runs (folder: {cache_root()}; set {ENV_CACHE_DIR} "
        "to move it). `info` lists its entries (size, files, sealed, model, GPU, precision); `clear` deletes "
        "one entry or the whole cache. Deleting it is always safe: the next run compiles again.",
    )
    p.add_argument("action", choices=("info", "clear"), help="info: list the entries; clear: delete")
    p.add_argument("key", nargs="?", default=None, help="with clear: the entry to delete (default: all)")
    ns = p.parse_args(list(argv))
    if ns.action == "info" and ns.key is not None:
        raise SettingsError(f"vaefix cache: info takes no KEY (got {ns.key!r}; see vaefix cache --help)")
    return cache_main([ns.action] + ([ns.key] if ns.key is not None else []))
