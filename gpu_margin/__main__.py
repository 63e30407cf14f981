"""``python -m gpu_margin`` is the ``gpu-margin`` command."""

import sys

from ._main import main

sys.exit(main())
