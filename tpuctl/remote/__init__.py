"""What runs on the workers: bash scripts (scripts/*.sh, shellchecked) and render.py, the one place that
puts values into them, quoted. The operations that choose the values are in tpuctl.ops."""
