"""``diffstream apdb init|upgrade|stats`` and ``diffstream lightcurve``: the APDB's tools.

The schema is the tool's to create and move on (stream/pipeline/apdb/store.py), never made by
hand; ``lightcurve`` prints (or plots) one diaObject's diaSources and forced photometry.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from diffstream.stream.ops.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError

__all__ = ["register"]


def _url(args: argparse.Namespace) -> str:
    from diffstream.stream.cli.main import settings_from

    settings = settings_from(args)
    if not settings.apdb:
        raise ConfigError("no APDB given: --apdb URL or DIFFSTREAM_APDB")
    return settings.apdb


def cmd_apdb(args: argparse.Namespace) -> int:
    from diffstream.stream.pipeline.apdb.store import Apdb

    url = _url(args)
    if args.action == "init":
        db = Apdb(url, create=True)
        print(f"APDB at {db.safe_url}: schema version {db.version()}")
    elif args.action == "upgrade":
        db = Apdb(url, create=False) if _exists(url) else Apdb(url, create=True)
        before, after = db.upgrade()
        print(f"APDB at {db.safe_url}: schema version {before} -> {after}")
    else:
        print(json.dumps(Apdb(url, create=False).stats(), indent=2))
    return EXIT_OK


def _exists(url: str) -> bool:
    from diffstream.stream.ops.errors import ApdbError
    from diffstream.stream.pipeline.apdb.store import Apdb

    try:
        Apdb(url, create=False)
    except ApdbError as exc:
        return "upgrade" in exc.message
    return True


def cmd_lightcurve(args: argparse.Namespace) -> int:
    from diffstream.stream.pipeline.apdb.store import Apdb

    db = Apdb(_url(args), create=False)
    obj = db.object(args.dia_object_id)
    if obj is None:
        print(f"diffstream: no diaObject {args.dia_object_id} in {db.safe_url}")
        return EXIT_BAD_INPUT
    sources, forced = db.light_curve(args.dia_object_id)
    print(
        f"diaObject {obj['diaObjectId']}  ra {obj['ra']:.6f}  dec {obj['dec']:.6f}  "
        f"nDiaSources {obj['nDiaSources']}  forced {len(forced)}"
    )
    print(f"{'midpointMjdTai':>15} {'band':>4} {'kind':>6} {'psfFlux':>12} {'psfFluxErr':>11} "
          f"{'scienceFlux':>12} {'visit':>12} {'detector':>8}")  # fmt: skip
    rows = [(s, "det") for s in sources] + [(f, "forced") for f in forced]
    rows.sort(key=lambda r: (r[0]["midpointMjdTai"], r[1]))
    for rec, kind in rows:
        print(
            f"{rec['midpointMjdTai']:>15.5f} {rec['band'] or '-':>4} {kind:>6} "
            f"{_num(rec['psfFlux']):>12} {_num(rec['psfFluxErr']):>11} "
            f"{_num(rec['scienceFlux']):>12} {rec['visit']:>12} {rec['detector']:>8}"
        )
    if args.plot:
        _plot(args.plot, obj, sources, forced)
        print(f"plot: {args.plot}")
    return EXIT_OK


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _plot(path: str, obj: dict[str, Any], sources: list[Any], forced: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rows, label, marker in ((forced, "forced (difference)", "s"), (sources, "diaSource", "o")):
        good = [r for r in rows if r["psfFlux"] is not None]
        ax.errorbar(
            [r["midpointMjdTai"] for r in good], [r["psfFlux"] for r in good],
            yerr=[r["psfFluxErr"] or 0.0 for r in good], fmt=marker, label=label, alpha=0.8,
        )  # fmt: skip
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("midpointMjdTai")
    ax.set_ylabel("psfFlux [nJy]")
    ax.set_title(f"diaObject {obj['diaObjectId']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register(sub: Any, add_settings_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``apdb`` and ``lightcurve`` to the ``diffstream`` subparsers."""
    a = sub.add_parser(
        "apdb",
        help="create, upgrade or count the APDB (alert production database)",
        description="init: create the tables (first use does it too); upgrade: move an older "
        "schema version on; stats: rows per table.",
    )
    a.add_argument("action", choices=["init", "upgrade", "stats"])
    add_settings_args(a)
    a.set_defaults(func=cmd_apdb)

    lc = sub.add_parser("lightcurve", help="print (or plot) one diaObject's light curve")
    lc.add_argument("dia_object_id", type=int, metavar="DIAOBJECTID")
    lc.add_argument("--plot", metavar="PNG", default=None, help="also plot it into this file")
    add_settings_args(lc)
    lc.set_defaults(func=cmd_lightcurve)
