"""One router per resource: risk scores, models, health."""
