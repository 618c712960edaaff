"""A simulated TPU VM built from real parts: sshd workers on loopback, a bare git origin, a fake TPU API.

The test suite, the benchmarks and the README demo share it. Nothing here is imported by the CLI.
"""
