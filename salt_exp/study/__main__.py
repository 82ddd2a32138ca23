"""``python -m salt_exp.study study FILE ...`` / ``study-report NAME``: the subcommands without salt_exp/cli.py."""

from __future__ import annotations

import argparse
import os
import sys

from salt_exp.errors import SaltError
from salt_exp.study.cli import add_study_parsers


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m salt_exp.study")
    add_study_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SaltError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
