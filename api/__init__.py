"""Cairn's custom resources, as pydantic models: the single source of truth for the CRD schemas."""
