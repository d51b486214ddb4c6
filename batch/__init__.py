"""gigabatch: the batch job runner for the GigaChat API."""

__version__ = "0.1.0"
