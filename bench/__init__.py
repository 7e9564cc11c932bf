"""Benchmarks: ``python -m bench [topic ...] [--quick] [--json PATH]``.

Not part of the installed packages. Each topic is a module ``bench/<topic>.py``
with a ``cases()`` function returning :class:`bench._harness.Case` objects,
registered in :data:`bench.__main__.TOPICS`. See bench/README.md.
"""
