"""Persistent Whisper transcription service."""

__version__ = "0.1.0"
