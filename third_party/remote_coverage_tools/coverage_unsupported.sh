#!/bin/sh
# Stands in for Bazel's coverage tools, which this offline workspace does not have.
echo "bazel coverage is not supported in this workspace: its coverage tools cannot be downloaded here." >&2
echo "Use 'tools/bazel test' instead." >&2
exit 1
