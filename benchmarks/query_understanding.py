"""A prototype of query-time attribute understanding for the scenario search, measured by
benchmarks/bench_retrieval.py as the modes `text+qu`, `vector+qu` and `hybrid+qu`.

What a search engine does when people's words are not the index's words: a domain lexicon
(Elasticsearch's synonym filter, a shop's facet dictionary) maps the phrases people use for a
driving scene to (1) the words the captions and the attribute answers use, appended to the query
(query expansion: BM25 and the embedding both see them), and (2) attribute facets, e.g. "downpour"
-> weather in {C}, "squad car" -> emergency_vehicle in {A}. The ranking then puts the clips that
match every detected facet first (a hybrid search under those facets as `--where` filters), then
the rest of the expanded hybrid ranking, so a wrong facet costs order, not results.

The lexicon below is written per attribute value of the packaged pool, from common English (British
and American) names for each value, not from the benchmark's queries; it is a prototype of what the
product would ship as data (e.g. `aliases` per choice in questions.json, user-extensible), not a
claim that these lists are complete. Everything here goes through `ScenarioDB.search` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (phrases, words added to the query, facets). A phrase is a regular expression matched on the
# lower-cased query with word boundaries around it.
LEXICON: list[tuple[list[str], str, dict[str, list[str]]]] = [
    # weather (sd03)
    ([r"rain(s|y|ing|fall)?", r"drizzl(e|y|ing)", r"downpours?", r"pour(s|ing)", r"showers?", r"storm(s|y)?",
      r"thunderstorms?", r"wet weather", r"precipitation", r"sleet", r"snow(s|y|ing)?"], "rain rainy", {"weather": ["C"]}),
    ([r"fog(s|gy)?", r"mist(s|y)?", r"haz(e|y)", r"murky", r"smog(gy)?", r"fogbound"], "fog", {"weather": ["D"]}),
    ([r"overcast", r"cloudy", r"clouds", r"clouded", r"gr[ae]y sk(y|ies)", r"gloomy", r"sunless", r"dull sk(y|ies)",
      r"leaden"], "overcast cloudy", {"weather": ["B"]}),
    ([r"clear sk(y|ies)", r"cloudless", r"blue sk(y|ies)", r"fair weather"], "clear", {"weather": ["A"]}),
    ([r"sunny", r"sunshine", r"sunlit", r"bright sun(light)?"], "clear daytime", {"weather": ["A"], "lighting": ["A"]}),
    # lighting (sd02)
    ([r"night(s|time)?", r"night-time", r"dark", r"darkness", r"pitch black", r"small hours", r"midnight",
      r"moonless", r"nightfall", r"unlit"], "night dark", {"lighting": ["D"]}),
    ([r"dusk", r"dawn", r"twilight", r"sunset", r"sundown", r"sunrise", r"daybreak", r"gloaming", r"evening"],
     "dusk sunset twilight", {"lighting": ["C"]}),
    ([r"daytime", r"daylight", r"day", r"morning", r"afternoon", r"midday", r"noon"], "daytime",
     {"lighting": ["A", "B"]}),
    # area (sd01)
    ([r"highways?", r"motorways?", r"freeways?", r"expressways?", r"interstates?", r"autobahn", r"dual carriageway",
      r"turnpike"], "highway", {"area": ["D"]}),
    ([r"rural", r"countryside", r"country (road|lane)s?", r"farmland", r"farms?", r"back ?roads?", r"villages?",
      r"out in the country"], "rural countryside", {"area": ["C"]}),
    ([r"suburbs?", r"suburban", r"residential", r"neighbou?rhoods?", r"housing estate", r"family homes"],
     "suburban residential", {"area": ["B"]}),
    ([r"city", r"cities", r"downtown", r"town cent(re|er)", r"city cent(re|er)", r"urban", r"inner[ -]city",
      r"main street", r"high street"], "city urban downtown", {"area": ["A"]}),
    # road surface (sd05)
    ([r"wet (road|surface|tarmac|asphalt)", r"slick", r"slippery", r"soaked", r"sodden", r"puddles?", r"damp",
      r"waterlogged"], "wet", {"road_surface": ["B"]}),
    # the ego vehicle (eb02, eb05, eb01, eb04, st05)
    ([r"turn(s|ing|ed)? left", r"left[- ](hand )?turns?", r"hang(s|ing)? a left", r"tak(e|es|ing) a left",
      r"swing(s|ing)? left", r"go(es|ing)? left"], "turns left", {"ego_turn": ["A"]}),
    ([r"turn(s|ing|ed)? right", r"right[- ](hand )?turns?", r"hang(s|ing)? a right", r"tak(e|es|ing) a right",
      r"swing(s|ing)? right", r"go(es|ing)? right"], "turns right", {"ego_turn": ["B"]}),
    ([r"(into|to) the left lane", r"(into|to) the lane on (our|its|the|my) left", r"lanes? (change )?to the left",
      r"(merge|merges|merging|move|moves|moving|switch|switches|switching) (over )?(to the |into the )?left"],
     "changes lanes to the left", {"ego_lane_change": ["A"]}),
    ([r"(into|to) the right lane", r"(into|to) the lane on (our|its|the|my) right", r"lanes? (change )?to the right",
      r"(merge|merges|merging|move|moves|moving|switch|switches|switching) (over )?(to the |into the )?right"],
     "changes lanes to the right", {"ego_lane_change": ["B"]}),
    ([r"standing still", r"stand(s)? still", r"motionless", r"stationary", r"(at a )?standstill", r"idling"],
     "stopped stationary", {"ego_maneuver": ["D"]}),
    ([(r"(stop|stops|stopped|stopping|halt|halts|halted|wait|waits|waiting) (at|for) (a |the )?(red( light)?|"
       r"stoplights?|traffic lights?|traffic signals?|signals?|lights)")], "stops for the red light", {"ego_stop": ["A"]}),
    ([r"halt(s|ed|ing)?", r"brought to a stop"], "stops stopped", {}),
    ([r"pull(s|ing)? (off|away)", r"mov(e|es|ing) off", r"set(s|ting)? off", r"get(s|ting)? going",
      r"start(s|ing)? moving", r"from a standstill"], "starts moving pulls away accelerates", {"ego_moving": ["C"]}),
    # the vehicle ahead (am01, ko01)
    ([r"slams? on", r"brak(e|es|ing) hard", r"hits? the brakes", r"emergency stop", r"sudden(ly)? brak(e|es|ing)",
      r"anchors"], "brakes braking", {"lead_vehicle_action": ["B"]}),
    ([r"behind (a |the )?(\w+ )*(lorry|lorries|truck|bus|coach|van|hgv)"], "behind a truck bus van",
     {"lead_vehicle": ["B"]}),
    ([r"lorry", r"lorries", r"hgv", r"big rig", r"semi"], "truck", {}),
    ([r"coach(es)?"], "bus", {}),
    ([r"motorist", r"motorists"], "vehicle car", {}),
    ([r"motorbikes?", r"scooters?"], "motorcycle", {}),
    # emergency vehicles (ko03, am07)
    ([r"police", r"cops?", r"cop cars?", r"squad cars?", r"patrol cars?", r"cruisers?"], "police car emergency",
     {"emergency_vehicle": ["A"]}),
    ([r"ambulances?", r"paramedics?", r"medics", r"ems"], "ambulance emergency", {"emergency_vehicle": ["B"]}),
    ([r"fire (truck|engine)s?", r"firefighters?('s?)?", r"firem[ae]n", r"fire brigade"], "fire truck emergency",
     {"emergency_vehicle": ["C"]}),
    ([r"emergency vehicles?", r"sirens?", r"flashing lights", r"blue lights", r"beacons?", r"strobes?",
      r"first responders?"], "emergency vehicle flashing lights", {"emergency_vehicle": ["A", "B", "C"]}),
    # cyclists, people (ci03, ci05, ci01, am04)
    ([r"bikes?", r"bicycles?", r"cyclists?", r"bikers?", r"bike riders?", r"cycling"], "cyclist",
     {"cyclist": ["A", "B", "C"]}),
    ([r"child", r"children", r"kids?", r"youngsters?", r"toddlers?", r"schoolchildren", r"schoolkids?"], "child",
     {"child": ["A", "B"]}),
    ([r"pedestrians?", r"on foot", r"walkers?", r"foot traffic"], "pedestrian", {}),
    # construction (sd11, ci04, ko06)
    ([r"road ?works?", r"construction( site| zone)?", r"work zones?", r"building site", r"cones", r"pylons"],
     "construction cones work zone", {"special_zone": ["A"]}),
    ([r"workers", r"workmen", r"crews?", r"road ?workers", r"labou?rers", r"hi-vis", r"high-vis(ibility)?",
      r"vests?"], "construction workers", {"road_workers": ["B", "C", "D"]}),
    # another vehicle cuts in (am03)
    ([r"cut(s|ting)? in", r"cut(s|ting)? (me|us) off", r"swerv(e|es|ing) in front", r"pull(s|ing)? in front",
      r"merg(e|es|ing) in front", r"squeez(e|es|ing) in"], "moves over into the ego's lane ahead of the ego vehicle",
     {"lane_change_other": ["A"]}),
    # traffic control, junctions (sd07, sd06)
    ([r"traffic lights?", r"stoplights?", r"traffic signals?", r"red light", r"green light"], "traffic light",
     {"traffic_control": ["A"]}),
    ([r"stop signs?"], "stop sign", {"traffic_control": ["B"]}),
    ([r"yield signs?", r"give way"], "yield sign", {"traffic_control": ["C"]}),
    ([r"crossroads", r"four-way", r"intersections?"], "intersection", {"junction": ["B"]}),
    ([r"t-junctions?"], "t-junction", {"junction": ["C", "D"]}),
    ([r"parked (cars|vehicles)"], "parked", {"parked_vehicles": ["A", "B", "C"]}),
]
_PERSON = r"(pedestrians?|someone|somebody|people|persons?|man|woman|kids?|child|children|walkers?|on foot)"
_CROSS = r"(cross(es|ing)?|across|walking over|going over|over to the (far|other) side|jaywalk(s|ing|er)?)"

_COMPILED = [([re.compile(r"(?<![\w-])" + p + r"(?![\w-])") for p in phrases], words, facets)
             for phrases, words, facets in LEXICON]


@dataclass
class Understood:
    text: str  # the query with the lexicon's words appended
    facets: dict[str, list[str]]  # attribute -> letters; several attributes: all
    matched: list[str]  # the phrases found


def understand(query: str) -> Understood:
    q = query.casefold()
    extra: list[str] = []
    facets: dict[str, set[str]] = {}
    matched: list[str] = []
    for patterns, words, fac in _COMPILED:
        hit = next((m.group(0) for p in patterns for m in [p.search(q)] if m), None)
        if hit is None:
            continue
        matched.append(hit)
        extra.append(words)
        for name, letters in fac.items():
            # two phrases naming one attribute: the intersection if they agree somewhere, else the union
            old = facets.get(name)
            facets[name] = (old & set(letters)) or (old | set(letters)) if old else set(letters)
    if re.search(_PERSON, q) and re.search(_CROSS, q):
        matched.append("person + crossing")
        extra.append("pedestrian crosses the road crosswalk")
        facets["pedestrian_crossing"] = {"A", "B"}
    text = " ".join([query, *extra]) if extra else query
    return Understood(text, {k: sorted(v) for k, v in facets.items()}, matched)


def search(db, query: str, mode: str = "hybrid", limit: int = 100) -> list[str]:
    """Clip ids ranked for `query` with the lexicon: the clips matching every facet first (ranked
    by `mode` under those filters), then the rest of the expanded query's ranking. Facets on
    attributes the database does not hold (labels that asked other questions) are left out."""
    u = understand(query)
    ranked = [h.clip_id for h in db.search(u.text, mode=mode, limit=limit)]
    known = {a.name for a in db.attributes()}
    facets = {k: v for k, v in u.facets.items() if k in known}  # a facet the labels do not answer is no filter
    if not facets:
        return ranked
    first = [h.clip_id for h in db.search(u.text, where=facets, mode=mode, limit=limit)]
    seen = set(first)
    return (first + [c for c in ranked if c not in seen])[:limit]
