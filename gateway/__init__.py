"""API-key authentication gateway for RPA Manager."""

__version__ = "0.1.0"
