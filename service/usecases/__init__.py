"""What the service does, as plain code over explicit collaborators: accept an upload as a job,
cancel one, show one or many, and the one services object the app factory builds. The HTTP
handlers (REST, OpenAI-compatible, dashboard) are thin adapters over these."""
