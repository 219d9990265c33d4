"""Clients of the inferag stack: the `inferag` command line (the Python SDK comes with the RAG API)."""
