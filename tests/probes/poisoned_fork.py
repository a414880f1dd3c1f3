"""Imported last in the forkserver's preload by rank_probe.py: torch now reports every process
forked from this server as a bad fork, as it does after the server touched the CUDA driver."""

import torch.cuda

torch.cuda._is_in_bad_fork = lambda: True
