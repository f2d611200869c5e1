#!/usr/bin/env python3
"""BIDS-App entry point: ``run.py bids_dir output_dir {participant,group} [options]``."""
import sys

from legseg_tf.cli import exit_after_run, main

if __name__ == "__main__":
    exit_after_run(main(sys.argv[1:]))
