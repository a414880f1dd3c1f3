"""The harness that runs PyTorch's distributed spawn suite as a Bazel test."""
