"""Common-knowledge facts (the synthetic benchmark's Not-To-Forget candidates), written here as data.

Each fact is ``(relation label, subject, sentence ending with the object, object)``. ``taalm ckl build`` keeps
only the facts the model under test answers, so the list can be generous.
"""

from __future__ import annotations

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Russia", "Moscow"), ("England", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Austria", "Vienna"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"), ("Hungary", "Budapest"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Belgium", "Brussels"), ("Turkey", "Ankara"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("India", "New Delhi"), ("South Korea", "Seoul"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("the Netherlands", "Amsterdam"), ("the Czech Republic", "Prague"),
    ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
    ("the United States", "Washington"),
]
LANGUAGES = [
    ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"),
    ("Japan", "Japanese"), ("Russia", "Russian"), ("Portugal", "Portuguese"), ("Greece", "Greek"),
    ("China", "Chinese"), ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("Poland", "Polish"),
    ("Sweden", "Swedish"), ("Turkey", "Turkish"), ("the Netherlands", "Dutch"), ("Korea", "Korean"),
]
CONTINENTS = [
    ("France", "Europe"), ("Germany", "Europe"), ("Brazil", "South America"), ("Argentina", "South America"),
    ("Kenya", "Africa"), ("Egypt", "Africa"), ("Nigeria", "Africa"), ("Japan", "Asia"), ("China", "Asia"),
    ("India", "Asia"), ("Canada", "North America"), ("Mexico", "North America"), ("Peru", "South America"),
    ("Italy", "Europe"), ("Thailand", "Asia"), ("Morocco", "Africa"),
]
LANDMARKS = [
    ("the Eiffel Tower", "Paris"), ("the Colosseum", "Rome"), ("Big Ben", "London"), ("the Kremlin", "Moscow"),
    ("the Statue of Liberty", "New York"), ("the Acropolis", "Athens"), ("the Brandenburg Gate", "Berlin"),
    ("the Sagrada Familia", "Barcelona"), ("the Golden Gate Bridge", "San Francisco"),
    ("the Forbidden City", "Beijing"), ("the Taj Mahal", "India"), ("Mount Fuji", "Japan"),
]
SCIENCE = [
    ("water", "The chemical formula of water is", "H2O"),
    ("the Earth", "The Earth orbits the", "Sun"),
    ("the Moon", "The Moon orbits the", "Earth"),
    ("plants", "Plants absorb carbon dioxide and release", "oxygen"),
    ("the heart", "The organ that pumps blood through the body is the", "heart"),
    ("ice", "Water that freezes turns into", "ice"),
    ("the week", "The day after Monday is", "Tuesday"),
    ("the year", "The month after January is", "February"),
    ("the sky", "On a clear day the sky is", "blue"),
    ("the planet", "The largest planet in the solar system is", "Jupiter"),
    ("the red planet", "The planet known as the Red Planet is", "Mars"),
    ("the ocean", "The largest ocean on Earth is the", "Pacific"),
    ("Shakespeare", "Romeo and Juliet was written by William", "Shakespeare"),
    ("Einstein", "The theory of relativity was developed by Albert", "Einstein"),
    ("Newton", "The law of universal gravitation was formulated by Isaac", "Newton"),
    ("the Mona Lisa", "The Mona Lisa was painted by Leonardo da", "Vinci"),
]


UUID_PREFIX = "synth-"
"""Every row `taalm data synth` writes has a ``uuid`` starting with this (LAMA-CKL's are UUIDs)."""


def common_facts() -> list[tuple[str, str, str, str]]:
    """All facts as ``(relation label, subject, sentence, object)``; each sentence ends with its object."""
    facts = [("capital", c, f"The capital of {c} is {o}", o) for c, o in CAPITALS]
    facts += [("official language", c, f"The official language of {c} is {o}", o) for c, o in LANGUAGES]
    facts += [("continent", c, f"{c[0].upper() + c[1:]} is a country in {o}", o) for c, o in CONTINENTS]
    facts += [("location", s, f"{s[0].upper() + s[1:]} is located in {o}", o) for s, o in LANDMARKS]
    facts += [("general knowledge", s, sentence + " " + o, o) for s, sentence, o in SCIENCE]
    return facts


def common_fact_rows() -> list[dict]:
    """The facts as LAMA-CKL-schema rows (the evidence is the fact sentence itself)."""
    rows = []
    for i, (label, subject, sentence, obj) in enumerate(common_facts()):
        rows.append({
            "relation_code": "C", "uuid": f"{UUID_PREFIX}nf-{i}", "task_descriptive": sentence,
            "task_schematic": f"Guess the object. \n  subject is {subject} , relation is {label} , object is {obj}",
            "subject": subject, "relation_label": label, "object": obj,
            "masked_evidence": sentence[: sentence.rfind(obj)] + "[MASK].", "evidence": sentence + ".",
        })
    return rows
