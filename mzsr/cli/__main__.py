"""`python -m mzsr.cli`: the `mzsr` command."""

import sys

from mzsr.cli import main

sys.exit(main())
