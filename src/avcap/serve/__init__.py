"""`avcap serve`: the scenario database and the benchmark's review queue in a local web app."""
