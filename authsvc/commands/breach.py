"""`authsvc breach-response ...`"""

from __future__ import annotations

import click


@click.group("breach-response")
def breach_response() -> None:
    """Forced password resets for many accounts."""
