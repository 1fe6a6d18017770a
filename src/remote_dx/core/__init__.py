"""Settings, database, ORM models, errors and clock shared by every stage."""
