"""``python -m clipdepth ...``: the same console entry point as the installed ``clipdepth`` script."""

import sys

from clipdepth.run.cli import main

sys.exit(main())
