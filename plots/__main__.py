import sys

from plots.report import main

sys.exit(main())
