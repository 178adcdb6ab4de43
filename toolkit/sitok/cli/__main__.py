"""``python -m sitok.cli``: the ``sitok`` console script."""

import sys

from sitok.cli import main

sys.exit(main())
