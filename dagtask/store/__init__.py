"""Persistence: the tables (:mod:`.schema`), the database connection (:mod:`.db`), the task store
(:mod:`.sql`), the host inventory's SQL (:mod:`.hosts`) and the Alembic migrations."""
