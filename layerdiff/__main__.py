"""`python -m layerdiff`: the `layerdiff` command."""

import sys

from layerdiff._entry import main

sys.exit(main())
