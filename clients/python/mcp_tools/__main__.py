"""`python -m mcp_tools`: the transcription MCP server on stdio."""

from mcp_tools.server import main

if __name__ == "__main__":
    main()
