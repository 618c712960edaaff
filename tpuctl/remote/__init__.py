"""What runs on the workers: bash scripts built from quoted parts, and the parsing of their output."""
