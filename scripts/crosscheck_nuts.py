"""Cross-check the exact posterior against NumPyro NUTS (same as ``hierjax crosscheck``).

Usage::

    PYTHONPATH=. python scripts/crosscheck_nuts.py [INPUT.csv] [--tau-prior SPEC] [--mu-prior SPEC]
        [--centered] [--chains C] [--warmup W] [--samples S] [--seed N] [--target-accept P]
        [--x64] [--json OUT.json]

With no INPUT: the eight schools (BDA3 Table 5.2).
"""

import sys

from hierjax.io.cli import main

if __name__ == "__main__":
    sys.exit(main(["crosscheck", *sys.argv[1:]]))
