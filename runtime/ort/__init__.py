"""ONNX Runtime backend: ``loader`` prepares a graph (RegionConv lowering, INT8 rewrites of ``int8``,
the stem's layout fold of ``layout``) and opens its session, ``runner`` runs it, ``backend`` joins
the stage graphs into one cascade session."""
