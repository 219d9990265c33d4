"""The RAG orchestrator: chunking, ingestion, the Qdrant store, retrieval, answers with citations, agents."""
