"""``python -m diffstream``: the same command line as the ``diffstream`` script."""

from diffstream.stream.cli.main import script

if __name__ == "__main__":
    raise SystemExit(script())
