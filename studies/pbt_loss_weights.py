"""Population-based training of the multihead CNN (conf/study/pbt_loss_weights.yaml): a schedule
of the learning rate and the thickness and smoothness weights (digit fixed at 1.0), for the best
val digit accuracy. 4 members on the CPU; on a GPU, --population auto --n-trials 32."""

import sys

from mhtrain import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.study.cli import main  # noqa: E402 - after the handler: importing torch takes seconds

if __name__ == "__main__":
    sys.exit(main("pbt_loss_weights", __doc__))
