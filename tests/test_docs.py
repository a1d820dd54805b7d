"""The repository carries its own facts: no file points outside it for them, and every
`docs/<file>.md §N` that the code and the docs cite names a section that exists.

Citations in code read `docs/reference.md §5.3`; in docs/*.md, `[reference.md](reference.md) §5.3`
(or `reference.md §5.3`). A section N exists when a heading starts with it (`## 5.`, `### 5.3`,
`### 1a.`), when a list item under heading H starts with `N.` (H.N), or when a bullet is labelled
with it (`* **8.12 ...`). Fixture paths (../shared/fixtures, read by the tests) are allowed.
"""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# Documents that live outside the repository (a clone does not have them), spelt in pieces so
# that this file does not match itself.
OUTSIDE = ["shared" + "/docs", "reference" + "-conventions", "ecosystem" + "-notes",
           "checkpoint" + "-formats", "published" + "-results", "detection" + "-conventions"]
SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".yml", ".yaml", ""}


def _text_files():
  roots = [REPO / "sbpose_jax", REPO / "tests", REPO / "scripts", REPO / "docs", REPO / ".ci"]
  files = [REPO / "README.md", REPO / "pyproject.toml"]
  for root in roots:
    if root.is_dir():
      files += [p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                and "__pycache__" not in p.parts]
  return files


def _sections(doc: pathlib.Path) -> set[str]:
  found, heading = set(), None
  for line in doc.read_text(encoding="utf-8").splitlines():
    m = re.match(r"#+ (\d+[a-z]?(?:\.\d+)*)[. ]", line)
    if m:
      heading = m.group(1)
      parts = heading.split(".")
      found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
      continue
    m = re.match(r"(\d+)\. ", line)
    if m and heading:
      found.add(f"{heading}.{m.group(1)}")
    m = re.match(r"\* (?:\*\*)?(\d+(?:\.\d+)+) ", line)
    if m:
      found.add(m.group(1))
  return found


def test_no_file_points_to_documents_outside_the_repository():
  offenders = []
  for path in _text_files():
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
      continue
    for n, line in enumerate(text.splitlines(), 1):
      for word in OUTSIDE:
        if word in line and path != pathlib.Path(__file__).resolve():
          offenders.append(f"{path.relative_to(REPO)}:{n}: {word}")
  assert not offenders, "\n".join(offenders)


def test_every_cited_section_exists():
  sections = {doc.name: _sections(doc) for doc in DOCS.glob("*.md")}
  # `reference.md §4.1, §5.1`, `ecosystem.md §1b/§1c`, `reference.md §0/§1.1`: every § of the list.
  cite = re.compile(r"\b([a-z_]+\.md)\)? (§[^\s,/)]+(?:(?:, |/)§[^\s,/)]+)*)")
  number = re.compile(r"§(\d+[a-z]?(?:\.\d+)*)")
  missing, count = [], 0
  for path in _text_files():
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
      for name, listed in cite.findall(line):
        if name not in sections:
          continue
        for section in number.findall(listed):
          count += 1
          if section not in sections[name]:
            missing.append(f"{path.relative_to(REPO)}:{n}: {name} §{section}")
  assert count >= 40, count  # the code does cite them
  assert not missing, "\n".join(missing)


def test_the_fact_documents_are_there():
  for name in ("reference.md", "checkpoints.md", "ecosystem.md", "published.md"):
    assert (DOCS / name).is_file(), name
  assert {"0", "1.1", "2.4", "3.5", "4.1", "5.3", "6.3", "7.1", "8.12", "10.1", "11.2"} <= \
      _sections(DOCS / "reference.md")
  assert {"1", "1c", "3", "4", "7"} <= _sections(DOCS / "ecosystem.md")
  assert {"4", "5.3", "6.5"} <= _sections(DOCS / "checkpoints.md")
