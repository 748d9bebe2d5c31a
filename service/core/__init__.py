"""Ground floor: settings, errors, ticker rules and the bar schema. Imports nothing of service."""
