"""Single-task baseline study (conf/study/baseline_lr.yaml): the digit-only CNN over the same
learning-rate range and budget as the lr study, for the multitask-versus-single-task comparison."""

import sys

from mhtrain import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.study.cli import main  # noqa: E402 - after the handler: importing torch takes seconds

if __name__ == "__main__":
    sys.exit(main("baseline_lr", __doc__))
