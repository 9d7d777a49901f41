"""PostgreSQL: the sans-IO codec (codec/) and everything that serves the wire (listener, relay, upstream, the gateway's own queries)."""
