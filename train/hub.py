"""Push a finished checkpoint folder to the Hugging Face Hub.

    python -m train.hub OUTPUT_DIR user/repo [--private] [--dry-run]

Entry point only: the code is `sisc_train.publishing.hub` (see its docstring, or `--help`).
"""

import sys

from sisc_train.publishing.hub import main

if __name__ == "__main__":
    sys.exit(main())  # the exit status says whether the push (or dry run) worked
