"""Fails on its first attempt, passes on the next (see tests/BUILD.bazel)."""

import os
import sys

marker = os.path.join(os.environ["FAILS_ONCE_DIR"], "attempted")
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit("first attempt: failing on purpose")
print("second attempt: passing")
