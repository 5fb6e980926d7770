"""The package version: a leaf module, so recording it (lc.json, engines.json, lc-doctor) imports nothing else."""

__version__ = "0.1.0"
