"""What a job is and what happens to it: the record and its states, the event bus, wake-ups,
cache keys, renderings of a result."""
