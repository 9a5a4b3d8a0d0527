"""Using a run's checkpoint: ``--eval`` and ``--predict`` (evaluate/inference.py), attention and feature maps
(evaluate/maps.py), latency and FLOPs (evaluate/measure.py), and the comparison that measures them before
``plots`` renders it (evaluate/compare.py, also ``python -m evaluate.compare``)."""
