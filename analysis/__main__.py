"""``python -m analysis FOLDER [--out DIR]``: comparison figure and markdown table from run folders."""
from __future__ import annotations

import argparse
import sys

from core.errors import AltlearnError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="altlearn-report", description=__doc__)
    parser.add_argument("folder", help="a folder holding runs (results.nc files, at any depth)")
    parser.add_argument("--out", default=None, help="where to write comparison.png and summary.md "
                        "(default: FOLDER)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    from analysis.report import write_report
    try:
        print(write_report(args.folder, args.out, title=args.title))
    except AltlearnError as err:
        print(f"altlearn-report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
