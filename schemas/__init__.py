"""Contracts of every topic and table: pydantic v2 models, bounds, and column batches.

Imports nothing else of the project; everything else imports it.
"""

SCHEMA_VERSION = "1"
