"""Loss-weight study of the multihead CNN (conf/study/loss_weights.yaml): the learning rate and
the thickness and smoothness weights (digit fixed at 1.0), for the best val digit accuracy."""

import sys

from mhtrain.study.cli import main

if __name__ == "__main__":
    sys.exit(main("loss_weights", __doc__))
