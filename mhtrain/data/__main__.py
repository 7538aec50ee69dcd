"""`python -m mhtrain.data [DATA_DIR]`: acquire and verify MNIST (what `make data` runs)."""

import argparse
import logging
import os
import sys

from mhtrain import one_line_errors
from mhtrain.data import mnist


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mhtrain.data", description=__doc__)
    parser.add_argument("data_dir", nargs="?", default=os.environ.get("MHTRAIN_DATA_DIR", "data"),
                        help="directory that holds (or will hold) MNIST/raw; "
                             "default $MHTRAIN_DATA_DIR or ./data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> int:
        print(f"MNIST verified in {mnist.ensure(args.data_dir)}")
        return 0

    return one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
