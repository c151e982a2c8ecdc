"""Thin clients named for what they do for the mesh (object store, embedder, vector index, workflow store,
config, job queue, events). They import only the contract, the settings and the leaf helpers, never an actor."""
