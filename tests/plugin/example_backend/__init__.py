"""A communication backend shipped as its own package, for the project's plugin tests.

Importing it registers the backend "example" with torch.distributed, as a vendor's package
does; its process group is gloo's, created by this package, so the suite's outcomes on it can
be compared with gloo's. It supports CPU tensors only.
"""

from datetime import timedelta

import torch.distributed as dist

BACKEND = "example"


def _create_process_group(store: dist.Store, rank: int, size: int, timeout: timedelta) -> dist.ProcessGroup:
    return dist.ProcessGroupGloo(store, rank, size, timeout)


if BACKEND not in dist.Backend.backend_list:
    dist.Backend.register_backend(BACKEND, _create_process_group, devices=["cpu"])
