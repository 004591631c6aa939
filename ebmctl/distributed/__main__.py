"""``python -m ebmctl.distributed ARGS``: the documented spelling of :mod:`ebmctl.torchrun`, kept so
existing ``torchrun ... -m ebmctl.distributed`` launches keep working."""

import sys

from ebmctl.torchrun import main

sys.exit(main(sys.argv[1:]))
