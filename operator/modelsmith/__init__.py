"""modelsmith: run a language model's whole life on Kubernetes."""

__version__ = "0.1.0"
