"""The case study's command: ``python bench/case_study.py [--smoke] [options] [overrides]``.

The study itself is the package ``bench/study`` (see its docstring, or ``--help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
