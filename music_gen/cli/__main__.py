"""`python -m music_gen.cli`: how submitted jobs run a command on the cluster."""

import sys

from music_gen.cli import main

sys.exit(main())
