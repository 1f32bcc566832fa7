"""`python -m napari_causalseg.cli` (what torchrun starts for DDP training)."""

import sys

from . import main

sys.exit(main())
