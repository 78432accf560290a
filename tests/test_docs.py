"""docs/architecture.md is the map a newcomer follows in one hop: every file it names exists, and every comment that
cites one of its sections cites a section it has."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGES = ("core", "train", "hosts", "service", "webui", "ui", "commands")


def test_every_file_the_map_names_exists():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:%s)/[\w/]+\.(?:py|txt))`" % "|".join(PACKAGES), text))
    named |= set(re.findall(r"`((?:bench|tests|docs|scripts)/[\w/.-]+)`", text))
    assert len(named) > 30
    missing = sorted(n for n in named if not (ROOT / "lib_copylora" / n).exists() and not (ROOT / n).exists())
    assert missing == []


def test_cited_sections_exist():
    sections = set(re.findall(r"^## (\d+)\. ", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M))
    cited = {}
    for path in [*ROOT.glob("lib_copylora/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]:
        for number in re.findall(r"architecture\.md §(\d+)", path.read_text(encoding="utf-8")):
            cited.setdefault(number, path.name)
    assert cited and set(cited) <= sections, {n: f for n, f in cited.items() if n not in sections}
