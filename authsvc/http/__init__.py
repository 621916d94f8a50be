"""HTTP layer: blueprints, request parsing, guards and the one error renderer."""
