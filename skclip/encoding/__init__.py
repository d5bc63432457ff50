"""The encoding engine and what it relies on: the embedding cache, claims, file stamps."""
