#!/usr/bin/env bash
# Every relative link in README.md, docs/*.md and deploy/README.md resolves: the file (or directory) exists, and a
# #fragment names a heading of the target Markdown file (GitHub's anchors: lower case, punctuation dropped, spaces
# as hyphens). Links to http(s) and mailto are not fetched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 - README.md docs/*.md deploy/README.md <<'PY'
import os, re, sys

def anchors(path):
    found, fenced = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            n, base = 1, slug
            while slug in found:
                slug, n = f"{base}-{n}", n + 1
            found.add(slug)
    return found

link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
failures = []
for md in sys.argv[1:]:
    text = open(md, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in link.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
        if not os.path.exists(resolved):
            failures.append(f"{md}: {target}: no such file {resolved}")
        elif fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
            failures.append(f"{md}: {target}: no heading #{fragment} in {resolved}")
for f in failures:
    print(f"check-links: FAIL: {f}", file=sys.stderr)
sys.exit(1 if failures else 0)
PY
echo "check-links: every relative link resolves"
