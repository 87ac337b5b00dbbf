"""Benchmarks: speed measured as ratios of two things timed in the same session, never asserted.

``make bench`` (or ``python -m benchmarks``) writes ``benchmarks/results.md`` and
``benchmarks/results.png``; ``make bench-quick`` a small version.
"""
