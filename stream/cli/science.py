"""Science extras of the ``diffstream`` command line (registered by diffstream.stream.cli.main).

    diffstream detect DIFFERENCE.fits --out DIR [--psf PSF.fits]
        [--visit N --detector N --exposure-id N]

Detection and measurement on a difference that arrives already subtracted (the seed's
doSubtract=False); see stream.pipeline.detect_only.  Exit codes as ``subtract``: 0 done, 2 bad
input (the message names the file and the reason), 3 no work; metadata.json is written in
every outcome.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from diffstream.stream.ops.errors import EXIT_OK, DiffstreamError, NoWorkFound

__all__ = ["register", "cmd_detect"]


def register(sub: argparse._SubParsersAction, add_settings_args: Callable) -> None:
    p = sub.add_parser(
        "detect",
        help="detect, measure and alert on a pre-subtracted DIFFERENCE (no subtraction)",
    )
    p.add_argument("difference", help="difference image: LSST MEF (IMAGE/MASK/VARIANCE[/PSF])")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--psf", help="PSF stamp FITS for the difference (overrides the file's)")
    p.add_argument("--visit", type=int)
    p.add_argument("--detector", type=int)
    p.add_argument("--exposure-id", type=int)
    add_settings_args(p)
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from diffstream.stream.cli.main import settings_from
    from diffstream.stream.pipeline.detect_only import detect_difference, write_detect_products
    from diffstream.stream.pipeline.products import write_metadata
    from diffstream.stream.provenance.taskmeta import TaskMetadata

    settings = settings_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = TaskMetadata()
    try:
        with meta.timer():
            result = detect_difference(
                args.difference,
                settings=settings,
                visit=args.visit,
                detector=args.detector,
                exposure_id=args.exposure_id,
                psf_path=args.psf,
                metadata=meta,
            )
            paths = write_detect_products(result, out)
    except NoWorkFound as exc:
        print(f"diffstream: no work: {exc.message}", file=sys.stderr)
        write_metadata(out, meta, status="no_work", error=exc.to_record(),
                       extra={"mode": "detect"})  # fmt: skip
        return exc.exit_code
    except DiffstreamError as exc:
        print(f"diffstream: error: {exc.message}", file=sys.stderr)
        write_metadata(out, meta, status="failed", error=exc.to_record(),
                       extra={"mode": "detect"})  # fmt: skip
        return exc.exit_code
    src = result.dia_sources
    n_neg = sum(1 for s in src if s["isNegative"])
    n_dip = result.dipoles.summary.get("nDipoles", 0)
    print(f"diaSources: {len(src)} ({len(src) - n_neg} positive, {n_neg} negative, "
          f"{n_dip} dipoles)")  # fmt: skip
    print("outputs:")
    for key, path in paths.items():
        print(f"  {key:<11} {path}")
    return EXIT_OK
