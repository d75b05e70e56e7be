"""A test-only Schema Registry REST endpoint (see ``tests.schemaregistry.server``)."""

from tests.schemaregistry.server import SchemaRegistryServer
from tests.schemaregistry.store import Incompatible, RegistryStore

__all__ = ["Incompatible", "RegistryStore", "SchemaRegistryServer"]
