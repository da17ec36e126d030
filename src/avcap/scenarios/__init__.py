"""The scenario database: what `avcap label` writes (`record`), `avcap index` builds and `avcap search` queries.

Nothing here runs a model or decodes video: records come in as files (docs/formats.md, "Scenario
records"), the database is LanceDB on local disk.
"""
