"""`python -m wash_sweeps.benchmarks [--tiny | --full] [--out FILE.json] [--only SECTION]`:
the same as `wash-sweeps bench`."""

import sys

from wash_sweeps.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
