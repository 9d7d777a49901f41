"""What one gateway process shares, whatever the protocol: Services, background tasks, TLS,
sign-in sessions, judging proposals. Imports no protocol package (postgres, ssh): a
protocol keeps its own per-process state on Services instead (Services.state)."""
