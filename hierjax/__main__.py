"""``python -m hierjax``: the ``hierjax`` command."""

import sys

from hierjax.io.cli import main

sys.exit(main())
