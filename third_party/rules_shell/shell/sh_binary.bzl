"""`sh_binary` under the name rules_shell gives it, forwarded to Bazel 4.2.3's native rule."""

sh_binary = native.sh_binary
