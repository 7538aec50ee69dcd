"""`python -m mhtrain.study export STUDY`: write the best trial as an experiment config."""

import argparse
import sys

from mhtrain import ConfigError
from mhtrain.study.export import export
from mhtrain.study.storage import DEFAULT_STORAGE


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mhtrain.study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write conf/experiment/best_<study>.yaml from the best trial")
    ex.add_argument("study", help="study name in the storage")
    ex.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    args = parser.parse_args()
    try:
        path = export(args.study, args.storage)
    except (ConfigError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}; reproduce with: python -m mhtrain.train experiment=best_{args.study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
