"""Human approval: per-action reviews, time-boxed access grants and proposals."""
