"""Loss-weight study of the multihead CNN (conf/study/loss_weights.yaml): the learning rate and
the thickness and smoothness weights (digit fixed at 1.0), for the best val digit accuracy."""

import sys

from mhtrain import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.study.cli import main  # noqa: E402 - after the handler: importing torch takes seconds

if __name__ == "__main__":
    sys.exit(main("loss_weights", __doc__))
