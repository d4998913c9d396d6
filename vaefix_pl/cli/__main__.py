import sys

from vaefix_pl.cli.commands import main

sys.exit(main())
