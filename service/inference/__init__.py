"""Turning audio into text: the worker's run loop, where inference runs (a thread or a supervised
process), models, audio decoding."""
