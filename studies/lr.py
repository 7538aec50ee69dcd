"""Learning-rate study of the multihead CNN (conf/study/lr.yaml): which lr gives the best
val digit accuracy when the auxiliary heads train alongside?"""

import sys

from mhtrain.study.cli import main

if __name__ == "__main__":
    sys.exit(main("lr", __doc__))
