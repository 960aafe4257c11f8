"""The transcription service's client side: the HTTP client, the MCP tools and the command line.

Installed on its own (the `whisper-transcription-client` distribution) into agents' containers;
it never imports the service. The service sends this version's wheel at `GET /client/` and
checks the `X-Client-Version` header every request carries.
"""

__version__ = "0.1.0"
