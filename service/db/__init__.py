"""The database: SQLAlchemy models, engine and sessions, and all SQL (bars, backtests)."""
