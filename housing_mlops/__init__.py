"""housing-mlops: California Housing from raw data to a monitored prediction service."""

__version__ = "0.1.0"
