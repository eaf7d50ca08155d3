"""What the pipeline's steps pass each other: the prepared pair on one grid, and the
runner that puts a science-side and a template-side step on two threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from diffstream.jitcore.tiles import thread_count

S = TypeVar("S")
T = TypeVar("T")


class Both:
    """Run a science-side and a template-side callable, on two threads when ``workers``
    (scipy.fft convention) allows more than one; returns both results, in that order.  An
    exception of either side is raised here, after both have finished."""

    def __init__(self, workers: int | None) -> None:
        self.threads = thread_count(workers, 2)

    def __call__(self, science: Callable[[], S], template: Callable[[], T]) -> tuple[S, T]:
        if self.threads == 1:
            return science(), template()
        with ThreadPoolExecutor(1, "template-side") as pool:
            t_future = pool.submit(template)
            try:
                s_result = science()
            finally:
                wait([t_future])
            return s_result, t_future.result()


@dataclass
class Prepared:
    """Science and warped template on one grid, calibrated to nJy, background-subtracted."""

    s_img: np.ndarray
    s_var: np.ndarray
    t_img: np.ndarray
    t_var: np.ndarray
    t_mask: np.ndarray  # warped template mask, in the science plane layout
    mask: np.ndarray  # combined mask on the science grid
    bad: np.ndarray  # pixels no measurement may use (repaired defects included)
    jacobian: np.ndarray
    coverage: float
    # Pixels with no data at all: what the background blanks and ZOGY / AL zero-weight (then
    # dilate into `valid`).  Repaired defects are data again (stream/pipeline/defects.py).
    no_data: np.ndarray
