"""Tools that measure rather than train: throughput (``bench.throughput``), A/B of one setting (``bench.ab``),
time to accuracy (``bench.time_to_accuracy``), all against one conventional loop (``bench.reference``).

Nothing imports ``bench``; it uses only the public names of ``config``, ``core``, ``data``, ``models``, ``train``.
"""
