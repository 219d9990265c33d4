"""Graph RAG: a knowledge graph per collection, extracted at ingestion, traversed at retrieval.

`extract` turns chunks into entities and relations (`keyphrase`: model-free, `llm`: the generation
service's structured output), `storage` keeps them in a companion Qdrant collection next to the
chunks, `index` is the in-process NetworkX graph that retrieval walks, `service` ties them to
ingestion and retrieval. Nothing is imported here, so importing `services.rag.graph.types` stays light.
"""
