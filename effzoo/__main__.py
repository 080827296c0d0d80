"""``python -m effzoo`` (works under torchrun: ``torchrun ... -m effzoo train ...``)."""
import sys

from effzoo.cli import main

sys.exit(main())
