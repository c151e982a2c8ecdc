"""mesh backup and restore: a consistent copy of what the mesh stores (Redis, JetStream, the object store)."""
