"""Preloaded in the forkserver by rank_probe.py: maps a stand-in CUDA driver into the server.

PROBE_LIBCUDA names the library (fake_libcuda.c built as libcuda.so.1); with
PROBE_LIBCUDA_INIT=1 the server also calls its cuInit, as a library that initialises the
driver at import would.
"""

import ctypes
import os

LIBRARY = ctypes.CDLL(os.environ["PROBE_LIBCUDA"])
if os.environ.get("PROBE_LIBCUDA_INIT") == "1":
    LIBRARY.cuInit(0)
