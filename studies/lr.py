"""Learning-rate study of the multihead CNN (conf/study/lr.yaml): which lr gives the best
val digit accuracy when the auxiliary heads train alongside?"""

import sys

from mhtrain import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()
from mhtrain.study.cli import main  # noqa: E402 - after the handler: importing torch takes seconds

if __name__ == "__main__":
    sys.exit(main("lr", __doc__))
