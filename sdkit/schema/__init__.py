"""Typed task schemas: the one home of fields, defaults and validation."""
