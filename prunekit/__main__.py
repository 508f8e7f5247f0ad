"""``python -m prunekit``: the command-line interface."""

import sys

from prunekit.cli import main

sys.exit(main())
