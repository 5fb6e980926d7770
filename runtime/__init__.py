"""Running a model: the cascade object, one subpackage per backend (``ort``, ``trt``, ``torch``),
segmenting files, benchmarks and lc-doctor's probes. Only ``runtime.torch`` imports torch."""
