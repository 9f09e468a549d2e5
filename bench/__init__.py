"""The benchmark harness: the gateway side by side with nginx and plain Python.

``python -m bench`` runs it; see bench/README.md for what it measures.
"""
