import sys

from regionprompt.cli import main

sys.exit(main())
