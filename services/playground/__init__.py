"""The playground: one HTML page (inline JS and CSS, no build step) served by the stack at `/` and `/playground`."""

from .router import playground_router

__all__ = ["playground_router"]
