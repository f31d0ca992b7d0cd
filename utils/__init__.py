"""Shared helpers: metrics, atomic IO, logging, user-facing errors."""
