"""Retrieval: token-aware chunking, FAISS indexes, a durable document store, and collections over them."""
