"""``python -m legseg_tf`` runs the BIDS App command line."""
import sys

from legseg_tf.cli import exit_after_run, main

exit_after_run(main(sys.argv[1:]))
