"""The quotes service: the runnable example of docs/guide.md (your own service on the mesh)."""
