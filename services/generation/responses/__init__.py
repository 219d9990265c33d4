"""OpenAI's Responses API (`/v1/responses`) on the generation service; `rag:` models reuse its pieces."""
