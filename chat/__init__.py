"""The course chat service: rooms, a line protocol, an IRC front door."""
