"""Database: models, engine and sessions, and the Alembic migration history."""
