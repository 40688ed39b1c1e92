#!/usr/bin/env python3
"""Validate the hand-written over-refusal evaluation set in datasets/curated/.

Standard library only. Usage:

    python3 tools/check_curated.py [--root DIR] [--quiet]

Checks, for xstest_like.jsonl and orbench_like.jsonl:
  * every line is a JSON object (UTF-8, no blank lines);
  * exactly the required fields, with the right value types;
  * ids are unique across both files and follow the id scheme;
  * kind / type values come from the fixed vocabularies;
  * xstest contrast pairs are symmetric (safe <-> unsafe_contrast, same type,
    same number) and every safe prompt has exactly one contrast;
  * orbench rows have contrast_id null;
  * provenance is "curated-v1";
  * per-type / per-category minimum counts;
  * text hygiene: 6-40 words, no leading numbering or prefixes, no web host names;
  * the per-type / per-category count tables in datasets/curated/README.md
    (when present) match the files;
  * opening variety: no single first word opens more than 40% of a file's
    prompts, and no two-word opening more than 20%;
  * near-duplicates: normalised lowercase word 3-gram Jaccard > 0.6 between any
    two prompts in the whole set, except a safe prompt and its own contrast,
    which share surface form by design.

Exits 0 and prints a summary when everything passes; exits 1 listing every
problem otherwise.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
import sys
from pathlib import Path

PROVENANCE = "curated-v1"

XS_TYPES = (
    "homonyms",
    "figurative_language",
    "safe_targets",
    "safe_contexts",
    "definitions",
    "real_group_discrimination_questions",
    "nonsense_group_discrimination",
    "historical_events",
    "privacy_public_figures",
    "fictional_privacy",
)
OB_TYPES = (
    "deception",
    "harassment",
    "harmful",
    "hate",
    "illegal",
    "privacy",
    "self-harm",
    "sexual",
    "unethical",
    "violence",
)
XS_MIN_SAFE_TOTAL = 250
XS_MIN_SAFE_PER_TYPE = 25
OB_MIN_TOTAL = 200
OB_MIN_PER_TYPE = 20

FIELDS = ("id", "text", "kind", "type", "contrast_id", "provenance")
MIN_WORDS, MAX_WORDS = 6, 40
JACCARD_LIMIT = 0.6
FIRST_WORD_SHARE = 0.40
FIRST_TWO_SHARE = 0.20

XS_ID = re.compile(r"^xs-(?P<type>[a-z_]+)-(?P<nn>\d{2,3})-(?P<side>safe|unsafe)$")
OB_ID = re.compile(r"^ob-(?P<type>[a-z-]+)-(?P<nn>\d{2,3})$")
LEADING_JUNK = re.compile(r"^\s*(\(?\d+[.):]|[-*•#>]|[A-Za-z ]{1,20}:\s)")
HOSTNAME = re.compile(
    r"(https?://|www\.|\b[a-z0-9-]+\.(com|org|net|io|gov|edu|info|biz|ai|dev|app|co\.uk|ac\.uk)\b)",
    re.IGNORECASE,
)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower().replace("\u2019", "'"))


def trigrams(text: str) -> frozenset[tuple[str, ...]]:
    w = words(text)
    if len(w) < 3:
        return frozenset([tuple(w)])
    return frozenset(zip(w, w[1:], w[2:]))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def load(path: Path, errors: list[str]) -> list[dict]:
    rows = []
    if not path.is_file():
        errors.append(f"{path}: missing")
        return rows
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append(f"{path}: not UTF-8 ({e})")
        return rows
    if text.startswith("\ufeff"):
        errors.append(f"{path}: has a byte-order mark")
    if text and not text.endswith("\n"):
        errors.append(f"{path}: last line has no newline")
    for n, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        where = f"{path.name}:{n}"
        if not line.strip():
            errors.append(f"{where}: blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{where}: not a JSON object")
            continue
        obj["_where"] = where
        rows.append(obj)
    return rows


def check_fields(row: dict, errors: list[str]) -> bool:
    where = row["_where"]
    keys = set(row) - {"_where"}
    ok = True
    if missing := [f for f in FIELDS if f not in keys]:
        errors.append(f"{where}: missing fields {missing}")
        ok = False
    if extra := sorted(keys - set(FIELDS)):
        errors.append(f"{where}: unexpected fields {extra}")
        ok = False
    for f in ("id", "text", "kind", "type", "provenance"):
        if f in row and not (isinstance(row[f], str) and row[f].strip()):
            errors.append(f"{where}: field {f!r} must be a non-empty string")
            ok = False
    if "contrast_id" in row and row["contrast_id"] is not None and not isinstance(row["contrast_id"], str):
        errors.append(f"{where}: contrast_id must be a string or null")
        ok = False
    if ok and row["provenance"] != PROVENANCE:
        errors.append(f"{where}: provenance {row['provenance']!r} != {PROVENANCE!r}")
    return ok


def check_text(row: dict, errors: list[str]) -> None:
    where, text = row["_where"], row["text"]
    n = len(text.split())
    if not MIN_WORDS <= n <= MAX_WORDS:
        errors.append(f"{where}: {n} words, outside {MIN_WORDS}-{MAX_WORDS}: {text!r}")
    if text != text.strip() or "  " in text or "\n" in text:
        errors.append(f"{where}: stray whitespace: {text!r}")
    if LEADING_JUNK.match(text):
        errors.append(f"{where}: looks numbered or prefixed: {text!r}")
    if HOSTNAME.search(text):
        errors.append(f"{where}: contains a web host name or URL: {text!r}")


def check_openings(name: str, rows: list[dict], errors: list[str]) -> dict:
    first = collections.Counter(words(r["text"])[0] for r in rows if words(r["text"]))
    two = collections.Counter(" ".join(words(r["text"])[:2]) for r in rows)
    total = max(len(rows), 1)
    for w, c in first.items():
        if c / total > FIRST_WORD_SHARE:
            errors.append(f"{name}: {c}/{total} prompts open with {w!r} (> {FIRST_WORD_SHARE:.0%})")
    for w, c in two.items():
        if c / total > FIRST_TWO_SHARE:
            errors.append(f"{name}: {c}/{total} prompts open with {w!r} (> {FIRST_TWO_SHARE:.0%})")
    return {"first": first.most_common(3), "two": two.most_common(3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "datasets" / "curated")
    ap.add_argument("--quiet", action="store_true", help="print only problems")
    args = ap.parse_args()

    errors: list[str] = []
    xs = load(args.root / "xstest_like.jsonl", errors)
    ob = load(args.root / "orbench_like.jsonl", errors)
    xs = [r for r in xs if check_fields(r, errors)]
    ob = [r for r in ob if check_fields(r, errors)]

    # ids unique across the whole set
    seen: dict[str, str] = {}
    for r in xs + ob:
        if r["id"] in seen:
            errors.append(f"{r['_where']}: duplicate id {r['id']!r} (first at {seen[r['id']]})")
        else:
            seen[r["id"]] = r["_where"]
    by_id = {r["id"]: r for r in xs}

    # xstest_like: vocabulary, id scheme, pairs
    for r in xs:
        where = r["_where"]
        check_text(r, errors)
        if r["type"] not in XS_TYPES:
            errors.append(f"{where}: unknown type {r['type']!r}")
        if r["kind"] not in ("safe", "unsafe_contrast"):
            errors.append(f"{where}: kind {r['kind']!r} not safe/unsafe_contrast")
            continue
        m = XS_ID.match(r["id"])
        want_side = "safe" if r["kind"] == "safe" else "unsafe"
        if not m or m["type"] != r["type"] or m["side"] != want_side:
            errors.append(f"{where}: id {r['id']!r} does not match xs-<type>-<NN>-{want_side} for type {r['type']!r}")
        cid = r["contrast_id"]
        other = by_id.get(cid) if cid else None
        if other is None:
            errors.append(f"{where}: contrast_id {cid!r} does not name a row in xstest_like.jsonl")
            continue
        if other.get("contrast_id") != r["id"]:
            errors.append(f"{where}: pair not symmetric: {r['id']} -> {cid} -> {other.get('contrast_id')}")
        if other["kind"] == r["kind"]:
            errors.append(f"{where}: {r['id']} and its contrast {cid} have the same kind")
        if other["type"] != r["type"]:
            errors.append(f"{where}: {r['id']} and its contrast {cid} differ in type")
        if m and (om := XS_ID.match(cid)) and om["nn"] != m["nn"]:
            errors.append(f"{where}: {r['id']} paired with a different number {cid}")
    targets = collections.Counter(r["contrast_id"] for r in xs if r["contrast_id"])
    for cid, c in targets.items():
        if c > 1:
            errors.append(f"xstest_like.jsonl: {cid} is the contrast of {c} rows")

    # orbench_like
    for r in ob:
        where = r["_where"]
        check_text(r, errors)
        if r["type"] not in OB_TYPES:
            errors.append(f"{where}: unknown category {r['type']!r}")
        if r["kind"] != "borderline":
            errors.append(f"{where}: kind {r['kind']!r} != 'borderline'")
        if r["contrast_id"] is not None:
            errors.append(f"{where}: contrast_id must be null")
        m = OB_ID.match(r["id"])
        if not m or m["type"] != r["type"]:
            errors.append(f"{where}: id {r['id']!r} does not match ob-<category>-<NN> for {r['type']!r}")

    # counts
    xs_safe = collections.Counter(r["type"] for r in xs if r["kind"] == "safe")
    xs_unsafe = collections.Counter(r["type"] for r in xs if r["kind"] == "unsafe_contrast")
    ob_count = collections.Counter(r["type"] for r in ob)
    for t in XS_TYPES:
        if xs_safe[t] < XS_MIN_SAFE_PER_TYPE:
            errors.append(f"xstest_like.jsonl: type {t}: {xs_safe[t]} safe prompts < {XS_MIN_SAFE_PER_TYPE}")
        if xs_unsafe[t] != xs_safe[t]:
            errors.append(f"xstest_like.jsonl: type {t}: {xs_safe[t]} safe but {xs_unsafe[t]} unsafe contrasts")
    if sum(xs_safe.values()) < XS_MIN_SAFE_TOTAL:
        errors.append(f"xstest_like.jsonl: {sum(xs_safe.values())} safe prompts < {XS_MIN_SAFE_TOTAL}")
    for t in OB_TYPES:
        if ob_count[t] < OB_MIN_PER_TYPE:
            errors.append(f"orbench_like.jsonl: category {t}: {ob_count[t]} prompts < {OB_MIN_PER_TYPE}")
    if len(ob) < OB_MIN_TOTAL:
        errors.append(f"orbench_like.jsonl: {len(ob)} prompts < {OB_MIN_TOTAL}")

    # the README's count tables must match the files
    readme = args.root / "README.md"
    if readme.is_file():
        row = re.compile(r"^\|\s*`(?P<t>[a-z_-]+)`\s*\|\s*(?P<a>\d+)\s*\|(?:\s*(?P<b>\d+)\s*\|)?\s*$")
        seen_rows = 0
        for line in readme.read_text(encoding="utf-8").splitlines():
            m = row.match(line)
            if not m:
                continue
            t, a, b = m["t"], int(m["a"]), m["b"]
            if b is not None and t in XS_TYPES:
                seen_rows += 1
                if (a, int(b)) != (xs_safe[t], xs_unsafe[t]):
                    errors.append(f"README.md: {t} listed as {a}/{b}, files have {xs_safe[t]}/{xs_unsafe[t]}")
            elif b is None and t in OB_TYPES:
                seen_rows += 1
                if a != ob_count[t]:
                    errors.append(f"README.md: {t} listed as {a}, file has {ob_count[t]}")
        if seen_rows != len(XS_TYPES) + len(OB_TYPES):
            errors.append(f"README.md: found {seen_rows} count rows, expected {len(XS_TYPES) + len(OB_TYPES)}")

    # opening variety, per file and per kind within xstest_like
    openings = {
        "xstest_like.jsonl (safe)": check_openings("xstest_like.jsonl (safe)", [r for r in xs if r["kind"] == "safe"], errors),
        "xstest_like.jsonl (unsafe_contrast)": check_openings(
            "xstest_like.jsonl (unsafe_contrast)", [r for r in xs if r["kind"] == "unsafe_contrast"], errors
        ),
        "orbench_like.jsonl": check_openings("orbench_like.jsonl", ob, errors),
    }

    # near-duplicates across the whole set (pair mates exempt)
    allrows = xs + ob
    grams = [trigrams(r["text"]) for r in allrows]
    exact = collections.defaultdict(list)
    for r in allrows:
        exact[" ".join(words(r["text"]))].append(r["id"])
    for ids in exact.values():
        if len(ids) > 1:
            errors.append(f"identical normalised text: {ids}")
    worst = (0.0, "", "")
    n_compared = 0
    for i, j in itertools.combinations(range(len(allrows)), 2):
        a, b = allrows[i], allrows[j]
        if a.get("contrast_id") == b["id"]:
            continue
        n_compared += 1
        s = jaccard(grams[i], grams[j])
        if s > worst[0]:
            worst = (s, a["id"], b["id"])
        if s > JACCARD_LIMIT:
            errors.append(f"near-duplicate (3-gram Jaccard {s:.2f}): {a['id']} {a['text']!r} ~ {b['id']} {b['text']!r}")
    pair_sims = [
        jaccard(trigrams(r["text"]), trigrams(by_id[r["contrast_id"]]["text"]))
        for r in xs
        if r["kind"] == "safe" and r["contrast_id"] in by_id
    ]

    if errors:
        for e in errors:
            print("ERROR", e)
        print(f"FAILED: {len(errors)} problem(s)")
        return 1

    if not args.quiet:
        lens = [len(r["text"].split()) for r in allrows]
        print("check_curated: OK")
        print(f"  xstest_like.jsonl : {len(xs)} rows = {sum(xs_safe.values())} safe + {sum(xs_unsafe.values())} unsafe_contrast")
        for t in XS_TYPES:
            print(f"    {t:<38} safe {xs_safe[t]:>3}  unsafe_contrast {xs_unsafe[t]:>3}")
        print(f"  orbench_like.jsonl: {len(ob)} rows (borderline)")
        for t in OB_TYPES:
            print(f"    {t:<38} {ob_count[t]:>3}")
        print(f"  ids unique: {len(seen)}; contrast pairs symmetric: {len(pair_sims)}")
        print(f"  words per prompt: min {min(lens)}, max {max(lens)}, mean {sum(lens) / len(lens):.1f}")
        for name, o in openings.items():
            print(f"  top openings {name}: {o['first']} / {o['two']}")
        print(
            f"  near-duplicate scan: {n_compared} pairs, max 3-gram Jaccard {worst[0]:.2f} "
            f"({worst[1]} ~ {worst[2]}), limit {JACCARD_LIMIT}"
        )
        if pair_sims:
            print(f"  safe/contrast surface overlap (exempt): mean 3-gram Jaccard {sum(pair_sims) / len(pair_sims):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
