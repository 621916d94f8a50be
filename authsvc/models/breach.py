"""Tables of this aggregate (none yet)."""

__all__: list[str] = []
