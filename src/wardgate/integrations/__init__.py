"""wardgate for AI agent frameworks: the MCP server and AutoGen helpers."""
