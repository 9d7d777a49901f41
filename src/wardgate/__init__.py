"""wardgate: segregation of duties for AI agents, at the protocol level."""

__version__ = "0.1.0"
