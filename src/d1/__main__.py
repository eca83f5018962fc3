"""`python -m d1 ...` (used under `accelerate launch -m d1`)."""

import sys

from d1.cli.main import main

sys.exit(main())
