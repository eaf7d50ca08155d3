"""Data roots: turn an event's location (path or ``file://`` URI) into an allowed local path.

An event names a file that the processor will open; without a check, an event could make it
read anything the process can read (``/etc/shadow``, ``../../secrets``).  The location is
resolved first (symlinks and ``..`` collapsed by :meth:`pathlib.Path.resolve`) and only then
compared with the resolved roots, so neither a symlink inside a root that points outside nor
``root/../elsewhere`` gets through.  A refused path is never opened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from diffstream.stream.ops.errors import PathNotAllowed

__all__ = ["resolve_data_path"]

# RFC 3986 scheme followed by ':'; only treated as a URI when followed by '//' or when the
# scheme is 'file', so that a plain relative name like 'a:b.fits' stays a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _location_to_path(location: str) -> Path:
    match = _SCHEME.match(location)
    if match is None:
        return Path(location)
    scheme = match.group(1).lower()
    rest = location[match.end() :]
    if scheme != "file":
        if not rest.startswith("//"):
            return Path(location)  # e.g. 'a:b.fits', a plain (odd) file name
        raise PathNotAllowed(
            f"unsupported URI scheme {scheme!r} in {location!r}: only plain paths and "
            "file:// URIs are read",
            path=location,
            reason="unsupported_scheme",
        )
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise PathNotAllowed(
            f"file URI {location!r} names host {parts.netloc!r}: only local files "
            "(file:///path or file://localhost/path) are read",
            path=location,
            reason="remote_host",
        )
    if parts.query or parts.fragment:
        raise PathNotAllowed(
            f"file URI {location!r} has a query or fragment, which a local path cannot have",
            path=location,
            reason="bad_uri",
        )
    if not parts.path:
        raise PathNotAllowed(f"file URI {location!r} has no path", path=location, reason="bad_uri")
    return Path(unquote(parts.path))


def resolve_data_path(location: str | Path, roots: Sequence[str | Path] | None) -> Path:
    """Resolve ``location`` and require it to lie under one of ``roots``.

    ``location`` is a plain path (absolute, or relative to the working directory) or a
    ``file://`` URI (percent-escapes decoded; host empty or ``localhost``).  ``roots=None``
    means *no restriction* and must be asked for explicitly; an empty sequence allows
    nothing.  Returns the resolved absolute path (which need not exist: opening it is the
    loader's job).  Raises :class:`~diffstream.stream.ops.errors.PathNotAllowed` (fields ``path``,
    ``roots``, ``reason``) for a location outside every root, an unsupported URI scheme,
    a remote ``file://`` host, or an unusable string (empty, NUL byte).
    """
    loc = str(location)
    if not loc.strip():
        raise PathNotAllowed("empty data location", path=loc, reason="empty")
    if "\x00" in loc:
        raise PathNotAllowed(
            f"data location {loc!r} contains a NUL byte", path=loc, reason="bad_path"
        )
    raw = _location_to_path(loc)
    if "\x00" in str(raw):  # a %00 escape in a URI
        raise PathNotAllowed(
            f"data location {loc!r} contains a NUL byte", path=loc, reason="bad_path"
        )
    try:
        resolved = raw.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # symlink loop, unreadable parent
        raise PathNotAllowed(
            f"cannot resolve data location {loc!r}: {exc}", path=loc, reason="unresolvable"
        ) from exc
    if roots is None:
        return resolved
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    for root in resolved_roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    shown = ", ".join(str(r) for r in resolved_roots) or "(none configured)"
    raise PathNotAllowed(
        f"{resolved} is outside every data root [{shown}]",
        path=loc,
        roots=[str(r) for r in resolved_roots],
        resolved=str(resolved),
        reason="outside_roots",
    )
