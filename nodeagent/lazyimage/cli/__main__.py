import sys

from lazyimage.cli import main

sys.exit(main())
