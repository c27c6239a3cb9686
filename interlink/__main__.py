import sys

from interlink.cli import main

sys.exit(main())
