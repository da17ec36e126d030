"""The scenario database: what `avcap label` writes (`record`), `avcap index` builds and `avcap search` queries.

Nothing here runs a model or decodes video: records come in as files (docs/formats.md, "Scenario
records"), the database is LanceDB on local disk (docs/formats.md, "Scenario database").

    from avcap.scenarios import open_db
    db = open_db("scenario_db")                       # open once; share between threads
    hits = db.search("pedestrian crossing at night", where=["weather=rain"], limit=10)
"""

from avcap.scenarios.db import Hit, IngestReport, ScenarioDB, ScenarioDBError, open_db
from avcap.scenarios.embed import Embedder, EmbedderError, load_embedder
from avcap.scenarios.query import QueryError

__all__ = ["Embedder", "EmbedderError", "Hit", "IngestReport", "QueryError", "ScenarioDB", "ScenarioDBError",
           "load_embedder", "open_db"]
