"""`authsvc audit ...`"""

from __future__ import annotations

import click


@click.group("audit")
def audit() -> None:
    """The security event trail."""
