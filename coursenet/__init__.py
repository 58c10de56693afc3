"""Shared pieces of the course network suite: accounts and TLS."""
