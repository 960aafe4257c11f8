"""MCP tools and an HTTP client for the transcription service."""
