"""The commands (lc-train, lc-eval, lc-info, lc-export, lc-calibrate, lc-build, lc-run, lc-bench,
lc-doctor): one module each, which parses its arguments, calls the library and prints. Nothing
imports this package."""
