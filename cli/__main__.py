"""``python -m fringelive.cli``: the ``fringelive`` console script."""

import sys

from fringelive.cli import main

sys.exit(main())
