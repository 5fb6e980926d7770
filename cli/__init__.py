"""The commands (lc-train, lc-eval, lc-info, lc-export, lc-calibrate, lc-build, lc-run, lc-bench,
lc-doctor): one module each, which parses its arguments, calls the library and prints. No package
of the library imports it (the import contracts in pyproject.toml)."""
