import sys

from hyperfrac.cli import main

sys.exit(main())
