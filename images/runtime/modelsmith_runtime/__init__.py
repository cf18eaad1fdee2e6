"""The code modelsmith's workload images run: one entrypoint per batch kind."""

__version__ = "0.1.0"
