"""Benchmarks run as `python -m bench.<name>`; they write nothing into the repository."""
