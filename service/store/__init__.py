"""Where job state and files live: the store protocol, SQLite, Redis, the cluster bus, the disk
layout, retention."""
