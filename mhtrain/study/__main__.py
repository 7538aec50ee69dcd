"""`python -m mhtrain.study run CONFIG [options] [overrides]`: run any conf/study/<CONFIG>.yaml.
`python -m mhtrain.study export STUDY`: write the best trial as conf/experiment/best_<STUDY>.yaml."""

import argparse
import sys

from mhtrain import one_line_errors
from mhtrain.study import cli
from mhtrain.study.export import export
from mhtrain.study.storage import DEFAULT_STORAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
        return cli.main(argv[1], f"Study conf/study/{argv[1]}.yaml.", argv[2:],
                        prog=f"python -m mhtrain.study run {argv[1]}")
    parser = argparse.ArgumentParser(prog="python -m mhtrain.study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run a study config: run CONFIG --help for its options")
    ex = sub.add_parser("export", help="write conf/experiment/best_<study>.yaml from the best trial")
    ex.add_argument("study", help="study name in the storage")
    ex.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    args = parser.parse_args(argv)
    if args.command == "run":
        parser.error("run needs a study config name, e.g. run loss_weights")

    def run() -> int:
        path = export(args.study, args.storage)
        print(f"wrote {path}; reproduce with: python -m mhtrain.train experiment=best_{args.study}")
        return 0

    return one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
