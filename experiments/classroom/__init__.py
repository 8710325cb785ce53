"""``altlearn classroom``: a local web page on which a teacher trains any registered rule live, or
two side by side, through the one `fit` engine.

Modules: `settings` (what a run is, each rule's knobs from its search space), `control` (pause,
resume, stop and jobs on the training thread), `board` (what the page shows of a run), `pictures`
(decision boundary, confusion matrix), `feed` (the training callback), `lesson` (the controller:
`RuleRun`, `Lesson`); the web side: `views` (bokeh figures), `page` (Panel layout), `server`.
Only the web side imports Panel (the ``classroom`` extra).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys


def main(argv=None) -> int:
    from experiments.classroom.server import DEFAULT_HOST, DEFAULT_PORT
    parser = argparse.ArgumentParser(prog="altlearn classroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 shares it)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if importlib.util.find_spec("panel") is None:
        print('altlearn classroom: error: Panel is not installed; pip install -e ".[classroom]"', file=sys.stderr)
        return 2
    from experiments.classroom.server import serve
    serve(args.host, args.port, open_browser=args.open)
    return 0


if __name__ == "__main__":
    sys.exit(main())
