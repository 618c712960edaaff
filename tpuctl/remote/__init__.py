"""What runs on the workers: bash scripts (scripts/*.sh) whose values render.py quotes, and the parsing of their output."""
