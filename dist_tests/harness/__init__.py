"""The harness that runs PyTorch's distributed spawn suite as a Bazel test, in layers (tests/test_layers.py):

0. what the harness shares with tools/ (shared: the words it writes into messages and test.xml,
   the repro command, free_port), standard library only;
1. what is read before torch loads: environment (the one writer of the process environment and the
   list of every variable), cuda_driver, matrix, selection, known_failures, faults, plugins,
   settings, ci_lists, gpu_leases, by_hand (what tools/python asks before it fetches packages);
2. the run's state and time budget: state, budget;
3. what faces torch: spawn_file, torch_internals (the one user of torch's private test internals),
   ranks, forkserver, forkserver_proof, reruns, reporting, plugin_preload (the run's plugin backend,
   prepared on import);
4. on top: suite (SpawnHarness), runner.

A module imports only from the layers below it.
"""
