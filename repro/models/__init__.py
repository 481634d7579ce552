"""Model families, the checkpoint registry and architecture cards."""
