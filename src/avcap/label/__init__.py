"""`avcap label`: caption and attribute answers for every clip of a fleet's clip set, as scenario records."""
