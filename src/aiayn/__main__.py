"""`python -m aiayn ...` (and `torchrun ... -m aiayn train ...`) is the `aiayn` command."""

import sys

from aiayn.cli import main

sys.exit(main())
