"""Leases GPUs as a GPU target does (the harness's own configure()), records them, and holds them.

For the lease tests (tests/test_gpu_leases.py) and tools/gpu/lease_benchmark. No CUDA needed:
stand-in indices come from DIST_TESTS_GPUS. It writes one JSON record per run into
LEASE_RECORDS_DIR (a folder the caller makes writable), when it holds the lease and again when
it lets go, and holds until LEASE_RELEASE_FILE exists, or for LEASE_HOLD_S seconds. With
LEASE_RECORD_DEVICES=1 it also records the UUIDs of the devices torch sees (tools/gpu/gpu_check).
"""

import json
import os
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dist_tests.harness import runner  # noqa: E402
from dist_tests.harness.state import RUN  # noqa: E402

runner.configure()  # checks the settings and leases WORLD_SIZE GPUs, or exits saying why
assert RUN.gpu_lease is not None, "a GPU run that did not lease"
record = {
    "target": os.environ.get("TEST_TARGET", ""),
    "shard": os.environ.get("TEST_SHARD_INDEX", "0"),
    "run": os.environ.get("TEST_RUN_NUMBER", "1"),
    "host": socket.gethostname(),
    "pid": os.getpid(),  # in its own pid namespace under Bazel
    "gpus": list(RUN.gpu_lease.gpus),
    "visible": os.environ["CUDA_VISIBLE_DEVICES"],
    "acquired": time.time(),
}
path = os.path.join(os.environ["LEASE_RECORDS_DIR"], f"{uuid.uuid4().hex}.json")


def write(record: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)  # readers never see half a record


if os.environ.get("LEASE_RECORD_DEVICES") == "1":  # tools/gpu/gpu_check: the devices CUDA shows this run
    import torch

    record["devices"] = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
write(record)
print(f"holding GPUs {RUN.gpu_lease.names()}", flush=True)
release_file = os.environ.get("LEASE_RELEASE_FILE")
# Never past Bazel's timeout: let go in time to pass.
until = time.monotonic() + (float(os.environ.get("LEASE_HOLD_S", "0")) if not release_file
                            else max(1.0, float(os.environ.get("TEST_TIMEOUT", "300")) - 20))
while time.monotonic() < until and not (release_file and os.path.exists(release_file)):
    time.sleep(0.1)
record["released"] = time.time()
write(record)
RUN.gpu_lease.release()
print("released", flush=True)
