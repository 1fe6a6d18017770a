"""Routing: which reading pool gets a study, with what priority and by when (SLA)."""
