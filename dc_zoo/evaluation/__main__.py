"""``python -m dc_zoo.evaluation`` / ``torchrun -m dc_zoo.evaluation``: the same as ``dc-zoo eval``."""
import sys

from .command import main

sys.exit(main())
