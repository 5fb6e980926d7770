"""The runtime command-line tools (lc-run)."""
