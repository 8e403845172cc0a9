"""TemporalWiki's files: the official layout read from fixture files, the paper's filter, malformed files refused by
file and line, the probe texts, φ's pairs, and the fictional world `taalm data twiki-synth` writes."""

import csv
import shutil
from pathlib import Path

import pytest

from taalm_dist.data import twiki
from taalm_dist.data.twiki_synth import twiki_world, write_twiki_synth
from taalm_dist.errors import DataError

FIXTURE = Path(__file__).parents[2] / "fixtures" / "twiki"


def test_the_official_layout_is_read_with_the_papers_filter():
    assert twiki.find_periods(FIXTURE) == ["0809", "0910"]
    lines, dropped = twiki.read_diffset(twiki.diffset_path(FIXTURE, "0809"))
    assert dropped == 3  # "nan", a short line, a line of numbers (< 30 % letters)
    assert lines[0].startswith("Nagpur Metro Rail is a rapid transit system for the city of Nagpur, Maharashtra")
    assert lines[1].endswith("in the spring of 2021.")
    probes = twiki.read_probes(twiki.probe_path(FIXTURE, "0809", "unchanged"))
    assert [(p.subject, p.relation, p.object) for p in probes] == [
        ("Malibu", "country", "United States of America"), ("Springfield, Illinois", "instance of", "city")]
    assert probes[1].where.endswith("0801-0901_unchanged.csv:3")
    assert twiki.probe_period("1112") == "1101-1201"
    assert twiki.diffset_path("D", "0910", subset=True) == Path("D/TWiki_Diffsets/wikipedia_0910_subset.csv")
    assert twiki.read_diffset(twiki.diffset_path(FIXTURE, "0809"), max_docs=1)[0] == lines[:1]


def test_the_filter_is_taalms():
    assert not twiki.keep_line("x" * 49) and twiki.keep_line("x" * 50)
    assert not twiki.keep_line("nan") and not twiki.keep_line("   " + "a" * 48 + "   ")
    assert twiki.keep_line("a" * 15 + "1" * 35) and not twiki.keep_line("a" * 14 + "1" * 36)  # 30 % ASCII letters
    assert not twiki.keep_line("é" * 60)  # TAALM counts [a-zA-Z]


def test_the_probe_texts_are_the_papers_and_temporalwikis():
    p = twiki.Probe("Nagpur Metro Rail", "has part", "Congress Nagar", "f:2")
    text, obj = twiki.probe_prompt(p)
    assert text == "Guess the object. \n  subject is Nagpur Metro Rail , relation is has part , object is Congress Nagar"
    assert obj == "Congress Nagar" and text.endswith(obj)
    assert twiki.probe_sro(p) == "Nagpur Metro Rail has part Congress Nagar"


def _copy(tmp_path) -> Path:
    d = tmp_path / "tw"
    shutil.copytree(FIXTURE, d)
    return d


@pytest.mark.parametrize("content, match", [
    ("subject,relation\nA,b\n", r"0801-0901_changed.csv:1: header \['subject', 'relation'\] lacks column\(s\) "
                                r"\['object'\]"),
    ("subject,relation,object\nA,b,c\nA,b\nD,e,f\n", r"0801-0901_changed.csv:3: 2 fields where the header has 3"),
    ("subject,relation,object\nA,b,c\nD,e,\n", r"0801-0901_changed.csv:3: empty object"),
    ("", r"0801-0901_changed.csv is empty"),
])
def test_malformed_probe_files_are_refused_naming_file_and_line(tmp_path, content, match):
    d = _copy(tmp_path)
    twiki.probe_path(d, "0809", "changed").write_text(content)
    with pytest.raises(DataError, match=match):
        twiki.read_probes(twiki.probe_path(d, "0809", "changed"))


def test_malformed_diffsets_and_layouts_are_refused(tmp_path):
    d = _copy(tmp_path)
    path = twiki.diffset_path(d, "0910")
    path.write_bytes(b"text\n" + b"a fine line that is long enough to be kept by the filter\n" + b"\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"wikipedia_0910_gpt2.csv:3: not UTF-8 \(byte 0"):
        twiki.read_diffset(path)
    path.write_text("body\nsome text\n")
    with pytest.raises(DataError, match=r"wikipedia_0910_gpt2.csv:1: header \['body'\] lacks column\(s\) \['text'\]"):
        twiki.read_diffset(path)
    path.write_text("text\nshort\nnan\n")
    with pytest.raises(DataError, match="no line passes the filter"):
        twiki.read_diffset(path)
    with pytest.raises(DataError, match="TWiki_Diffsets does not exist"):
        twiki.find_periods(tmp_path)
    with pytest.raises(DataError, match="no wikipedia_MMNN_subset.csv"):
        twiki.find_periods(d, subset=True)
    with pytest.raises(DataError, match="1101-1201_changed.csv does not exist"):
        twiki.read_probes(twiki.probe_path(d, "1112", "changed"))


def test_phi_pairs_take_the_shortest_line_that_states_subject_and_object():
    lines = ["Jane Doe is the mayor of Springfield now, after a close and long contested election.",
             "Springfield elected Jane Doe.", "Nothing about it here at all."]
    probes = [twiki.Probe("Springfield", "head of government", "Jane Doe", "f:2"),
              twiki.Probe("Shelbyville", "head of government", "Joe", "f:3")]
    rows, unmatched = twiki.make_pairs(lines, probes, "0910")
    assert unmatched == 1 and len(rows) == 1
    assert rows[0]["evidence"] == "Springfield elected Jane Doe." and rows[0]["object"] == "Jane Doe"
    assert rows[0]["task_schematic"] == twiki.probe_prompt(probes[0])[0]


def test_the_fictional_world_is_written_in_the_official_layout_and_is_consistent(tmp_path):
    counts = write_twiki_synth(tmp_path, entities=12, periods=3, change_rate=0.25, noise_lines=2, seed=3)
    assert twiki.find_periods(tmp_path) == ["0809", "0910", "1011"]
    with twiki.diffset_path(tmp_path, "0809").open() as f:
        assert next(csv.reader(f)) == ["text"]  # as the official files: one column
    with twiki.probe_path(tmp_path, "0910", "changed").open() as f:
        assert next(csv.reader(f)) == ["subject", "relation", "object"]
    world = twiki_world(entities=12, periods=3, change_rate=0.25, noise_lines=2, seed=3)
    assert world == twiki_world(entities=12, periods=3, change_rate=0.25, noise_lines=2, seed=3)  # seeded
    assert counts["0809"] == {"lines": 12, "changed": 96, "unchanged": 0}
    for period in ("0910", "1011"):
        lines, _ = twiki.read_diffset(twiki.diffset_path(tmp_path, period))
        changed = twiki.read_probes(twiki.probe_path(tmp_path, period, "changed"))
        unchanged = twiki.read_probes(twiki.probe_path(tmp_path, period, "unchanged"))
        assert len(changed) == 3 and len(lines) == 3 + 2
        for p in changed:  # the new value is stated in a line of the period, in other words than the probe's
            assert any(p.subject in line and p.object in line for line in lines)
        first = {(p.subject, p.relation, p.object) for p in twiki.read_probes(twiki.probe_path(tmp_path, "0809",
                                                                                                "changed"))}
        assert {(p.subject, p.relation, p.object) for p in unchanged} <= first  # stated first, never changed
        assert not {(p.subject, p.relation) for p in changed} & {(p.subject, p.relation) for p in unchanged}
    with pytest.raises(DataError, match="exist; pass --overwrite"):
        write_twiki_synth(tmp_path, entities=12, periods=3)
    with pytest.raises(DataError, match="run past month 12"):
        twiki_world(periods=6)
