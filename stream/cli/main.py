"""The ``diffstream`` command line.

    diffstream subtract SCIENCE.fits TEMPLATE.fits --out DIR
        [--visit N --detector N --exposure-id N]
        [--science-hdu EXT --science-variance FILE --science-mask FILE]
        [--template-hdu EXT --template-variance FILE --template-mask FILE]
        [--variance-kind variance|weight|sigma]
    diffstream demo [--out DIR] [--size N] [--seed S]

Exit codes: 0 done, 2 bad input (the message names the file and the reason), 3 no work.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffstream import __version__
from diffstream.stream.cli.summary import print_summary
from diffstream.stream.ops.errors import (
    EXIT_BAD_INPUT,
    EXIT_NO_WORK,
    EXIT_OK,
    DiffstreamError,
    NoWorkFound,
)
from diffstream.stream.ops.memory import configure_from_env
from diffstream.stream.ops.settings import Settings, load_settings

log = logging.getLogger("diffstream")

# Modules that add subcommands: stream (run, publish-event), tools (replay, tail, check),
# provenance (config/versions), science extras (detect).
PLUGIN_MODULES = (
    "diffstream.stream.cli.stream",
    "diffstream.stream.cli.tools",
    "diffstream.stream.cli.science",
    "diffstream.stream.cli.inject",
    "diffstream.stream.cli.apdb",
)


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (also DIFFSTREAM_* env vars or --config TOML)")
    g.add_argument("--config", help="TOML settings file")
    g.add_argument("--override-file", help="survey/camera override TOML (applied before --config)")
    g.add_argument("--method", choices=["zogy", "al"], default=None)
    g.add_argument("--detection-threshold", type=float, default=None)
    g.add_argument("--required-template-fraction", type=float, default=None)
    g.add_argument("--tile-size", type=int, default=None)
    g.add_argument("--exposure-bits", type=int, default=None)
    g.add_argument("--allow-uncalibrated", action="store_true", default=None)
    g.add_argument(
        "--refit-astrometry",
        action="store_true",
        default=None,
        help="refit the template->science mapping from matched stars",
    )
    g.add_argument("--astrometry-order", type=int, default=None)
    g.add_argument("--data-root", action="append", dest="data_roots", default=None)
    g.add_argument(
        "--apdb",
        default=None,
        help="APDB URL (sqlite:///path or postgresql://...): associate, forced photometry, "
        "histories in the alerts (also DIFFSTREAM_APDB)",
    )


def _add_survey_args(p: argparse.ArgumentParser) -> None:
    from diffstream.stream.io.companions import VARIANCE_KINDS

    g = p.add_argument_group(
        "survey files (DECam ooi/oow/ood, ZTF sciimg/mskimg, JWST i2d; stream/io/companions.py)"
    )
    for side in ("science", "template"):
        g.add_argument(f"--{side}-hdu", help=f"EXTNAME or index of the {side} image HDU")
        g.add_argument(
            f"--{side}-variance",
            metavar="FILE",
            help=f"{side} noise map (its kind: --{side}-variance-kind)",
        )
        g.add_argument(
            f"--{side}-variance-kind",
            choices=VARIANCE_KINDS,
            default=None,
            help="variance, inverse-variance weight (DECam oow) or sigma; default --variance-kind",
        )
        g.add_argument(
            f"--{side}-mask", metavar="FILE", help=f"{side} mask file (nonzero = bad; ZTF bits)"
        )
    g.add_argument(
        "--variance-kind",
        choices=VARIANCE_KINDS,
        default="variance",
        help="what the --*-variance files hold when not said per side (default: variance)",
    )


def survey_files(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """load_exposure's survey keywords for ``side`` ("science"/"template") from the flags."""
    files: dict[str, Any] = {}
    hdu = getattr(args, f"{side}_hdu", None)
    if hdu is not None:
        files["hdu"] = hdu
    variance = getattr(args, f"{side}_variance", None)
    if variance is not None:
        files["variance_path"] = variance
        kind = getattr(args, f"{side}_variance_kind", None)
        files["variance_kind"] = kind or getattr(args, "variance_kind", "variance")
    mask = getattr(args, f"{side}_mask", None)
    if mask is not None:
        files["mask_path"] = mask
    return files


def _add_provenance_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("provenance and debugging (docs/metadata.md)")
    g.add_argument(
        "--debug-plots",
        metavar="DIR",
        default=None,
        help="write debug PNGs (panels, cutouts, S_corr histogram, PSFs) into DIR",
    )
    g.add_argument(
        "--clobber-config",
        action="store_true",
        help="replace a different config (and schema list) stored in --out",
    )
    g.add_argument(
        "--clobber-versions",
        action="store_true",
        help="replace different package versions stored in --out",
    )
    g.add_argument(
        "--backup",
        action="store_true",
        help="with --clobber-*, keep each replaced file as NAME.~N~",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings object for a parsed command line (defaults < files < env < CLI).

    ``-X key=value`` (dest ``kafka_overrides``) adds to, and wins over, the ``kafka`` table of
    the TOML file / env, key by key: any librdkafka property passes through unchanged.
    """
    settings = _settings_from(args)
    overrides = dict(getattr(args, "kafka_overrides", None) or [])
    if overrides:
        settings = settings.model_copy(update={"kafka": {**settings.kafka, **overrides}})
    return settings


def _settings_from(args: argparse.Namespace) -> Settings:
    cli: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            cli[name] = value
    return load_settings(override_file=args.override_file, config_file=args.config, cli=cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffstream", description="Difference imaging (ZOGY) and LSST alerts."
    )
    parser.add_argument("--version", action="version", version=f"diffstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("subtract", help="subtract TEMPLATE from SCIENCE, write alerts and images")
    p.add_argument("science")
    p.add_argument("template")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--visit", type=int)
    p.add_argument("--detector", type=int)
    p.add_argument("--exposure-id", type=int)
    p.add_argument("--science-psf", help="external PSF for the science (FITS stamp)")
    p.add_argument("--template-psf", help="external PSF for the template (FITS stamp)")
    p.add_argument("--science-background", help="background to add back to the science (FITS)")
    _add_survey_args(p)
    _add_provenance_args(p)
    _add_settings_args(p)

    d = sub.add_parser("demo", help="simulate a pair, subtract it, print a summary (no Kafka)")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--size", type=int, default=1024, help="image side in pixels")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument(
        "--visits",
        type=int,
        default=None,
        help="N visits of one field (variables, a transient at visit 4) through the APDB",
    )
    _add_settings_args(d)

    # Other command groups register themselves (each module: register(sub) adding parsers
    # with set_defaults(func=handler)); keeps this file small and the groups independent.
    import importlib

    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub, _add_settings_args)
    return parser


def cmd_subtract(args: argparse.Namespace) -> int:
    from diffstream.stream.pipeline.products import write_metadata, write_products
    from diffstream.stream.pipeline.subtract import subtract_files
    from diffstream.stream.provenance.store import (
        check_and_write_versions,
        write_config,
        write_schemas,
    )
    from diffstream.stream.provenance.taskmeta import TaskMetadata

    settings = _settings_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Refuse a store holding another config / software stack / schema set before any work
    # (ConfigError -> exit 2 with the diff, via main()).
    write_config(out, settings, clobber=args.clobber_config, backup=args.backup)
    check_and_write_versions(out, clobber=args.clobber_versions, backup=args.backup)
    write_schemas(out, clobber=args.clobber_config, backup=args.backup)
    meta = TaskMetadata()
    try:
        with meta.timer():
            result = subtract_files(
                args.science,
                args.template,
                settings=settings,
                visit=args.visit,
                detector=args.detector,
                exposure_id=args.exposure_id,
                metadata=meta,
                science_psf=args.science_psf,
                template_psf=args.template_psf,
                science_background=args.science_background,
                science_files=survey_files(args, "science"),
                template_files=survey_files(args, "template"),
            )
            paths = write_products(result, out)
    except NoWorkFound as exc:
        print(f"diffstream: no work: {exc.message}", file=sys.stderr)
        write_metadata(out, meta, status="no_work", error=exc.to_record())
        return EXIT_NO_WORK
    except DiffstreamError as exc:
        print(f"diffstream: error: {exc.message}", file=sys.stderr)
        write_metadata(out, meta, status="failed", error=exc.to_record())
        return exc.exit_code
    if args.debug_plots:
        from diffstream.stream.io.plots import write_debug_plots

        for path in write_debug_plots(result, args.debug_plots):
            paths[f"plot {path.stem.rsplit('-', 1)[-1]}"] = path
    print_summary(result, paths)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from diffstream.stream.cli.demo import run_demo

    if args.visits:
        from diffstream.stream.cli.demo_visits import run_visits_demo

        settings = _settings_from(args)
        if settings.apdb is None:  # the embedded APDB, as run_demo's
            db = Path(args.out).resolve() / "apdb.sqlite3"
            settings = settings.model_copy(update={"apdb": f"sqlite:///{db}"})
        return run_visits_demo(args, settings)
    return run_demo(args, _settings_from(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before any large array exists: freed exposures stay in the heap (stream/ops/memory.py).
    configure_from_env()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "subtract":
            return cmd_subtract(args)
        if args.command == "demo":
            return cmd_demo(args)
        if hasattr(args, "func"):
            return int(args.func(args))
    except DiffstreamError as exc:  # settings errors and the like, before any output
        print(f"diffstream: error: {exc.message}", file=sys.stderr)
        return exc.exit_code if exc.exit_code else EXIT_BAD_INPUT
    parser.error(f"unknown command {args.command}")
    return EXIT_BAD_INPUT


def script() -> int:
    """The ``diffstream`` command and ``python -m diffstream``: :func:`main`, then the cyclic
    garbage collector frozen for the interpreter's exit.

    Why: the process is about to end and the OS takes its memory back, but finalisation still
    runs the collector over every object the imports made (numba's, llvmlite's and astropy's
    type machinery): 0.55-0.81 s of every command's exit, measured on ``diffstream subtract``
    of a 1k pair, against 0.10-0.11 s frozen (issue 17's fixed overhead).  atexit handlers
    (logging's flush, clients' close) still run; only unreachable cycles are left to the OS.
    Not in :func:`main`, which tests and embedding programs call in a process that goes on.
    """
    rc = main()
    gc.freeze()
    return rc


if __name__ == "__main__":
    raise SystemExit(script())
