"""Alert size part by part, as published on Kafka (Rubin's framing, official schema).

    .venv/bin/python benchmarks/alert_sizes.py [--seed 15] [--shape 512]

Subtracts one simulated pair and prints, averaged over its alerts: the Kafka value, the three
cutouts (and, inside each, the PSFIMAGE HDU), and the rest (the diaSource record and the
5-byte prefix).  Rubin's ~82 KB average (DMTN-102, with history) is the reference, not a limit.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.fits import write_pair
from diffstream.stream.sim.simulate import simulate_pair
from diffstream.stream.transport.wire import alert_codec

CUTOUTS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")


def _psf_bytes(cutout: bytes) -> int:
    """Bytes of the PSFIMAGE HDU (header + padded data) inside a cutout."""
    with fits.open(io.BytesIO(cutout)) as hdul:
        for hdu in hdul:
            if hdu.name == "PSFIMAGE":
                info = hdul.fileinfo(hdul.index_of("PSFIMAGE"))
                return int(info["datLoc"] - info["hdrLoc"] + info["datSpan"])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--shape", type=int, default=512)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pair = simulate_pair(seed=args.seed, shape=(args.shape, args.shape), n_transients=20)
        write_pair(pair, Path(tmp))
        result = subtract_files(
            str(Path(tmp) / "science.fits"), str(Path(tmp) / "template.fits"), settings=Settings()
        )
    codec = alert_codec("alerts")
    rows = []
    for alert in result.alerts:
        value = codec.serialize(alert, None)
        cut = [len(alert[k]) for k in CUTOUTS]
        psf = [_psf_bytes(alert[k]) for k in CUTOUTS]
        sides = [fits.getdata(io.BytesIO(alert[k])).shape[0] for k in CUTOUTS[:1]]
        rows.append((len(value), sum(cut), sum(psf), len(value) - sum(cut), sides[0]))
    arr = np.array(rows, dtype=float)
    print(f"{len(rows)} alerts, simulated {args.shape}x{args.shape} pair, seed {args.seed}")
    print(f"{'part':<34}{'mean bytes':>12}{'max bytes':>12}")
    names = ("Kafka value (framed)", "three cutouts", "  of which PSFIMAGE HDUs",
             "records + prefix (value - cutouts)", "cutout side [px]")  # fmt: skip
    for i, name in enumerate(names):
        print(f"{name:<34}{arr[:, i].mean():>12.0f}{arr[:, i].max():>12.0f}")


if __name__ == "__main__":
    main()
