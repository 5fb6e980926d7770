"""TensorRT backend: ``engines`` is the engine dir lc-build writes (format, checks, buffer plan;
pure Python), ``build`` builds it, ``loader`` checks an engine dir against this machine and
deserializes it, ``runner`` runs the stage engines on one CUDA stream."""
