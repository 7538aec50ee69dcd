"""Single-task baseline study (conf/study/baseline_lr.yaml): the digit-only CNN over the same
learning-rate range as the multihead arms it is the reference for (loss_weights, equal_lr, …) and
the lr study's budget, for the multitask-versus-single-task comparison."""

import sys

from mhtrain import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.study.cli import main  # noqa: E402 - after the handler: importing torch takes seconds

if __name__ == "__main__":
    sys.exit(main("baseline_lr", __doc__))
