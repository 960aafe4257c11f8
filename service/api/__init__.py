"""The HTTP side: thin aiohttp handlers over the use cases, the route table, schemas, OpenAPI,
streams, the dashboard, metrics and auth."""
