"""CLI command groups, one module per capability; registered in authsvc.cli."""
