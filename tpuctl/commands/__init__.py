"""The command groups: one module each, registering its commands on the root app. A command parses its
arguments, calls operations (tpuctl.ops, tpuctl.gcp) and prints their reports (views.py); nothing heavy
is imported until a command runs."""
