"""Shared fixtures of the APDB tests: a real PostgreSQL, fresh databases, synthetic exposures.

``pg_server`` uses ``DIFFSTREAM_TEST_APDB`` (a PostgreSQL URL; ``make test`` starts one with
compose/postgres-local.sh and passes it) or starts its own with the same script on a free
port, stopped at the end of the session, so a plain ``pytest`` works too.  ``apdb_url`` is
a factory: each call makes a new empty database (SQLite file or PostgreSQL database).
Import the fixtures into a test module: ``from tests.apdb_helpers import apdb_url, pg_server``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS

from diffstream.jitcore.masks import DEFAULT_PLANES, MASK_DTYPE
from diffstream.jitcore.psf import PsfModel
from diffstream.stream.io.exposure import Exposure

PG_LOCAL = Path(__file__).resolve().parents[1] / "compose" / "postgres-local.sh"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running PostgreSQL server's maintenance database, for the whole session."""
    given = os.environ.get("DIFFSTREAM_TEST_APDB", "").strip()
    if given:
        yield given
        return
    env = {
        **os.environ,
        "PGPORT": str(free_port()),
        "PG_LOCAL_DIR": str(tmp_path_factory.mktemp("postgres-local")),
    }
    run = subprocess.run(
        ["bash", str(PG_LOCAL), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if run.returncode != 0:
        pytest.fail(f"postgres-local.sh start failed:\n{run.stdout}\n{run.stderr}")
    url = subprocess.run(
        ["bash", str(PG_LOCAL), "url"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(PG_LOCAL), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def apdb_url(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``make(backend)``: the URL of a new, empty database ("sqlite" or "postgresql")."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'apdb-{uuid.uuid4().hex[:8]}.sqlite3'}"
        import psycopg

        base = request.getfixturevalue("pg_server")
        name = f"apdb_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return base.rsplit("/", 1)[0] + "/" + name

    return make


def gaussian_psf(sigma: float = 1.5, size: int = 15) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma**2)
    return g / g.sum()


def synthetic_exposure(
    *,
    ra: float,
    dec: float,
    shape: tuple[int, int] = (200, 200),
    visit: int,
    detector: int = 0,
    mjd: float = 60500.0,
    scale_arcsec: float = 0.2,
) -> Exposure:
    """An Exposure on a TAN WCS centred at (ra, dec), blank (sky noise added by the caller)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    w.wcs.cd = np.array([[-scale_arcsec / 3600.0, 0.0], [0.0, scale_arcsec / 3600.0]])
    img = np.zeros(shape, dtype=np.float32)
    return Exposure(
        image=img, variance=np.ones(shape, dtype=np.float32),
        mask=np.zeros(shape, dtype=MASK_DTYPE), mask_planes=dict(DEFAULT_PLANES), wcs=w,
        psf=PsfModel.constant(gaussian_psf(), shape), photo_calib=1.0,
        midpoint_mjd_tai=mjd, band="r", visit=visit, detector=detector,
        exposure_id=visit * 1000 + detector,
    )  # fmt: skip


def images_of(exposure: Exposure, difference: np.ndarray, sigma: float = 1.0) -> dict:
    """The ``images`` mapping associate_exposure reads (difference = science here)."""
    var = np.full(difference.shape, sigma**2, dtype=np.float32)
    psf = gaussian_psf()
    return {
        "difference": difference.astype(np.float32), "difference_variance": var,
        "psf_d_at": lambda x, y: psf,
        "science": difference.astype(np.float32), "science_variance": var,
        "psf_science_at": lambda x, y: psf,
        "mask": exposure.mask, "mask_planes": exposure.mask_planes,
    }  # fmt: skip
