"""Wire models of the inferag API, shared by the services (`services/`) and the SDK (`inferag_client`).

Pure pydantic models, no server dependency: one module per API family.

- `rag`: collections, documents, jobs, chunking, `/rag/retrieve`, `/rag/rerank`, `/rag/query` and its stream events
- `agent`: `/rag/agent`'s request, stream events and response
- `graph`: the knowledge graph's views (`/rag/collections/{name}/graph...`) and a graph hit's evidence
- `perplexity`: `/v1/perplexity`
- `common`: bounds and helpers the families share (the seed's range, ids)
"""
