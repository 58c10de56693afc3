"""A multi-table no-limit Texas Hold'em server (docs/poker.md)."""
