"""``python -m legseg_tf`` runs the BIDS App command line."""
import sys

from legseg_tf.cli import main

sys.exit(main(sys.argv[1:]))
