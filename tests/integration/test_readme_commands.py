"""The README's commands run as written (issue 16: `diffstream run --input-dir events/
--output-dir out/` exited 2, "needs at least one data root").

Every ``diffstream`` command in the README's ``sh`` blocks is parsed (continuation lines
joined, ``[optional]`` parts and ``# comments`` dropped), its placeholders substituted (``B``
-> the test broker, ``/data`` -> a temporary data root, ``science.fits``/``template.fits`` ->
a simulated pair, ``difference.fits`` -> the subtraction's output) and run in a temporary
directory.  Commands that run until stopped get a bound (``--max-messages``, ``--timeout``,
``--exit-when-idle``) appended; ``replay`` (it re-processes a whole topic) is listed as skipped.
A command must not be refused (exit 2) nor end in a traceback; those that need nothing outside
the test (subtract, detect, publish-event, run, tail) must exit 0.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# Appended so that a command that would run until stopped ends by itself.
BOUNDS = {
    "run": ["--max-messages", "1", "--no-warmup"],
    "run-dir": ["--exit-when-idle", "1", "--no-warmup"],
    "tail": ["--timeout", "5", "--max", "3"],
}
SKIPPED = {
    "replay": "re-processes a whole archived topic",
}
MUST_SUCCEED = {"subtract", "detect", "publish-event", "run", "run-dir", "tail"}


def readme_commands(text: str) -> list[list[str]]:
    """Every diffstream command of the README's sh blocks, as argv without the program."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()  # a trailing comment
            line = re.sub(r"\[[^\]]*\]", "", line)  # [optional] parts
            words = shlex.split(line)
            if words and words[0] in ("diffstream", ".venv/bin/diffstream"):
                out.append(words[1:])
    return out


def _kind(argv: list[str]) -> str:
    return "run-dir" if argv[0] == "run" and "--input-dir" in argv else argv[0]


def test_the_readme_lists_the_commands_this_test_runs():
    kinds = {_kind(a) for a in readme_commands(README.read_text())}
    assert {"subtract", "detect", "publish-event", "run", "run-dir", "tail", "check"} <= kinds


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    root = tmp_path_factory.mktemp("readme")
    pair = simulate_pair(seed=7, shape=(256, 256), n_stars=60, n_transients=8)
    sci, tmpl = write_pair(pair, root / "data", truth_csv=False)
    (root / "events").mkdir()
    return root, sci, tmpl


def test_the_readme_commands_run(kafka_bootstrap, workdir):
    root, sci, tmpl = workdir
    topic_suffix = uuid.uuid4().hex[:8]
    subst = {
        "B": kafka_bootstrap,
        "/data": str(root / "data"),
        "science.fits": str(sci),
        "template.fits": str(tmpl),
        "difference.fits": str(root / "out" / "difference.fits"),
    }
    ran, skipped = [], []
    for argv in readme_commands(README.read_text()):
        kind = _kind(argv)
        if kind in SKIPPED:
            skipped.append((kind, SKIPPED[kind]))
            continue
        args = [subst.get(a, a) for a in argv]
        # The worker's topics stay the README's names but get a per-run suffix, so that a
        # broker kept between runs (kafka-local.sh keeps its data) holds no stale events.
        args = [f"{a}-{topic_suffix}" if a in ("exposures", "alerts", "exposures.dlq",
                "diffstream.metadata") else a for a in args]  # fmt: skip
        if kind == "tail" and "--topic" not in args:
            continue  # the file form is in the same comment; the topic form is run
        cmd = [sys.executable, "-m", "diffstream", *args, *BOUNDS.get(kind, [])]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                              check=False)  # fmt: skip
        what = f"{shlex.join(argv)} -> exit {done.returncode}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, what
        assert done.returncode != 2, what
        if kind in MUST_SUCCEED:
            assert done.returncode == 0, what
        ran.append(kind)
    print(f"ran {ran}; skipped {skipped}")
    assert {"subtract", "publish-event", "run", "run-dir", "tail"} <= set(ran)
