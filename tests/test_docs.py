"""The docs name only what exists: every relative link and every file path of the project in README.md and docs/."""

import os
import re

from tests.cli import ROOT

DOCS = ["README.md"] + [
    os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")
]
TOP = {name for name in os.listdir(ROOT) if not name.startswith(".")} | {".ci"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def _anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    text = open(path).read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # (not the shell comments of code blocks)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _project_path(token):
    """A token in backticks that names a file or folder of this project (not a pattern, not a run's output)."""
    token = token.split()[0].rstrip(".,:;)").split(":")[0] if token.strip() else ""
    if (
        any(c in token for c in "<>*{}$=")
        or token.startswith(("-", "results/", "../"))
        or "/" not in token
        and not token.endswith((".py", ".sh", ".txt", ".ini", ".md"))
    ):
        return None
    return token if token.split("/")[0] in TOP else None


def test_every_relative_link_and_anchor_exists():
    broken = []
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc)).read()
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
            if not os.path.exists(full):
                broken.append(f"{doc}: {target}")
            elif anchor and full.endswith(".md") and anchor not in _anchors(full):
                broken.append(f"{doc}: {target} (no such heading)")
    assert broken == []


def test_every_file_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for token in CODE.findall(open(os.path.join(ROOT, doc)).read()):
            path = _project_path(token)
            if path and not os.path.exists(os.path.join(ROOT, path)):
                missing.append(f"{doc}: {token}")
    assert missing == []


def test_the_readme_is_a_front_door():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert len(text.splitlines()) <= 260
    first_screen = "\n".join(text.splitlines()[:40])
    for needed in ("bash run.sh --quick", "python -m pytest -q tests", "Blind Knowledge Distillation"):
        assert needed in first_screen, needed
    for section in (
        "## What a run produces",
        "## Where the paper lives in the code",
        "## The three scripts",
        "## Differences from the original",
        "## On a GPU",
    ):
        assert section in text, section
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert ".venv/bin/python -m pytest -q tests" in ci and ".venv/bin/python -m pytest -q tests" in first_screen
