"""Service layer: one module per capability. Services never commit; the caller owns the
transaction."""
