"""Adapters between kvstore and agent frameworks.

Each lives in its own module or package and imports its framework only
when imported itself: `kvstore.integrations.langgraph` needs the
`langgraph` extra (``pip install 'kvstore[langgraph]'``).
"""

__all__: list[str] = []
