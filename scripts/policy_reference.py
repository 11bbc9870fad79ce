#!/usr/bin/env python3
"""The policy reference in docs/reference/, generated from the filters' JSON Schemas.

    scripts/policy_reference.py            # write docs/reference/<filter>.md for every filter
    scripts/policy_reference.py --check    # exit 1 (with a diff) if a committed page differs from what
                                           # the schemas give, or if a relative link in README.md or
                                           # docs/ points to a file or heading that does not exist

The schemas come from `gatewarden schema <filter>` (schemars, from the Rust types' doc comments), so
the reference says what the code accepts. Filters: `ip_geo`, `jwt`, `rate_limit`, `validate`, and every other one that
`gatewarden schema --help` lists. The CLI: $GATEWARDEN_CLI, else target/debug/gatewarden (built with
`cargo build -q -p gatewarden` when missing). Output is deterministic: fields sorted by name.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
BASE_FILTERS = ["ip_geo", "jwt", "rate_limit", "validate"]
TITLES = {"ip_geo": "IP/geo", "jwt": "JWT", "rate_limit": "Rate limit", "validate": "Request validation"}

Schema = dict[str, Any]


# --- the CLI -------------------------------------------------------------------------------------

def cli() -> str:
    if os.environ.get("GATEWARDEN_CLI"):
        return os.environ["GATEWARDEN_CLI"]
    path = ROOT / "target" / "debug" / "gatewarden"
    if not path.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "gatewarden"], cwd=ROOT, check=True)
    return str(path)


def listed_filters(help_text: str) -> list[str]:
    """Filter names in `gatewarden schema --help`: clap's `[possible values: a, b]` or a
    `filters: a, b` line."""
    names: list[str] = []
    for pattern in (r"possible values:\s*([^\]\n]+)", r"^\s*filters:\s*(.+)$"):
        for m in re.finditer(pattern, help_text, re.MULTILINE | re.IGNORECASE):
            names += [n.strip() for n in m.group(1).split(",")]
    return [n for n in names if re.fullmatch(r"[a-z][a-z0-9_]*", n)]


def filters(binary: str) -> list[str]:
    r = subprocess.run([binary, "schema", "--help"], capture_output=True, text=True, timeout=120)
    found = listed_filters(r.stdout + "\n" + r.stderr)
    return sorted(set(BASE_FILTERS) | set(found))


def schema_of(binary: str, name: str) -> Schema:
    r = subprocess.run([binary, "schema", name], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit(f"error: `gatewarden schema {name}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


# --- schema to rows ------------------------------------------------------------------------------

def one_line(text: str | None) -> str:
    """A description as one table cell: lines joined, `|` escaped."""
    if not text:
        return ""
    return " ".join(line.strip() for line in text.splitlines() if line.strip()).replace("|", "\\|")


def code(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    return f"`{text}`".replace("|", "\\|")


class Reference:
    """Walks one filter's schema and collects a table row per field (path, type, required,
    default, description). A `$ref` is resolved where it is used; a definition that contains itself
    (a requirement of requirements) is expanded once and then named by the path that expanded it."""

    def __init__(self, schema: Schema):
        self.root = schema
        self.defs: dict[str, Schema] = schema.get("$defs", {})
        self.rows: list[tuple[str, str, str, str, str]] = []

    def resolve(self, node: Schema) -> tuple[Schema, str | None]:
        ref = node.get("$ref")
        if ref is None:
            return node, None
        if ref == "#":
            return self.root, "#"
        name = ref.rsplit("/", 1)[-1]
        return self.defs.get(name, {}), name

    @staticmethod
    def non_null(variants: list[Schema]) -> list[Schema]:
        return [v for v in variants if v.get("type") != "null"]

    def variants(self, node: Schema) -> list[Schema]:
        """The alternatives of a `oneOf`/`anyOf`, without `null` (null means absent)."""
        return self.non_null(node.get("oneOf") or node.get("anyOf") or [])

    def type_name(self, node: Schema, stack: dict[str, str]) -> str:
        target, ref = self.resolve(node)
        if ref == "#":
            return "policy document"
        if ref is not None and ref in stack:
            return f"as `{stack[ref]}`"
        if "const" in target:
            return code(target["const"])
        alternatives = self.variants(target)
        if alternatives:
            if all("const" in v for v in alternatives):
                return " \\| ".join(code(v["const"]) for v in alternatives)
            if len(alternatives) == 1:
                return self.type_name(alternatives[0], stack)
            return " \\| ".join(self.form_label(v) for v in alternatives)
        if "enum" in target:
            return " \\| ".join(code(v) for v in target["enum"])
        types = target.get("type")
        if isinstance(types, list):
            types = [t for t in types if t != "null"]
            types = types[0] if len(types) == 1 else types
        if types is None:
            return "any JSON value"
        if isinstance(types, list):
            return " or ".join(types)
        if types == "array":
            item = self.type_name(target.get("items", {}), stack)
            return f"list, each {item}" if item.startswith("as `") else f"list of {item}"
        if types == "object" and isinstance(target.get("additionalProperties"), dict):
            return f"map of name to {self.type_name(target['additionalProperties'], stack)}"
        if types == "integer":
            bound = target.get("minimum")
            return "integer ≥ 0" if bound == 0 else "integer"
        return types

    def description(self, node: Schema) -> str:
        """The field's own description, else its definition's; then the alternatives of an enum
        or of a field with several forms."""
        target, ref = self.resolve(node)
        text = one_line(node.get("description") or (target.get("description") if ref != "#" else None))
        if ref == "#":
            text = (text + " " if text else "") + "Takes every field of this page."
        forms = self.variants(target)
        if len(forms) > 1:
            parts = []
            for v in forms:
                label = code(v["const"]) if "const" in v else self.form_label(v)
                about = one_line(v.get("description")).rstrip(".")
                parts.append(f"{label}: {about}" if about else label)
            text = (text + " " if text else "") + "Forms: " + "; ".join(parts) + "."
        return text.strip()

    def form_label(self, variant: Schema) -> str:
        target, _ = self.resolve(variant)
        props = list(target.get("properties", {}))
        if "const" in target:
            return code(target["const"])
        if target.get("type") == "object" and len(props) == 1:
            return f"`{{\"{props[0]}\": …}}`"
        return self.type_name(variant, {})

    def field(self, path: str, node: Schema, required: bool, stack: dict[str, str],
              form: Schema | None = None) -> None:
        """One row; `form` is the alternative (of a field with several forms) the field belongs to:
        it is required only in that form, and its description stands in for a missing one."""
        target, ref = self.resolve(node)
        default = code(node["default"]) if "default" in node else ""
        about = self.description(node)
        if form is not None and not about:
            about = one_line(form.get("description"))
        need = ("in its form" if form is not None else "yes") if required else ""
        self.rows.append((f"`{path}`", self.type_name(node, stack), need, default, about))
        if ref == "#":
            return
        if ref is not None:
            if ref in stack:
                return
            stack = {**stack, ref: path}
        self.children(path, target, stack)

    def children(self, path: str, target: Schema, stack: dict[str, str],
                 form: Schema | None = None) -> None:
        forms = self.variants(target)
        if forms:
            for v in forms:
                inner, ref = self.resolve(v)
                if ref is not None and ref in stack:
                    continue
                inner_stack = {**stack, ref: path} if ref else stack
                self.children(path, inner, inner_stack, v if len(forms) > 1 else form)
            return
        types = target.get("type")
        if isinstance(types, list):
            types = next((t for t in types if t != "null"), None)
        if types == "array" and "items" in target:
            self.element(f"{path}[]", target["items"], stack)
        elif types == "object":
            required = set(target.get("required", []))
            for name in sorted(target.get("properties", {})):
                self.field(f"{path}.{name}" if path else name, target["properties"][name],
                           name in required, stack, form)
            extra = target.get("additionalProperties")
            if isinstance(extra, dict):
                self.element(f"{path}.<name>", extra, stack)

    def element(self, path: str, node: Schema, stack: dict[str, str]) -> None:
        """An array element or a map value: a row of its own only when it has fields below it or
        refers back to a definition being expanded."""
        target, ref = self.resolve(node)
        if ref is not None and ref in stack:
            self.rows.append((f"`{path}`", self.type_name(node, stack), "", "",
                              "Recursive: any form of that field."))
            return
        if ref is not None:
            stack = {**stack, ref: path}
        before = len(self.rows)
        self.children(path, target, stack)
        if len(self.rows) == before and self.variants(target):
            self.rows.append((f"`{path}`", self.type_name(node, stack), "", "", self.description(node)))


def render(name: str, schema: Schema) -> str:
    title = TITLES.get(name, name)
    out = [
        f"# {title} policy reference",
        "",
        f"<!-- Generated by scripts/policy_reference.py from `gatewarden schema {name}`; do not edit.",
        "     Change the doc comments of the Rust types, then run scripts/policy_reference.py. -->",
        "",
        one_line(schema.get("description")) + " Every field, from the Rust types that parse it.",
        "Unknown fields are refused. A field that is not required may be left out (or `null`); its",
        "default then applies. `[]` stands for any element of a list, `<name>` for any key of a map.",
        "The envelope every filter shares (`policy_version`, `mode`, rules and matchers, `rollout`,",
        "`signatures`) is explained in [The policy document](../policy-document.md); a remote source",
        "(`geo_database`, `remote_jwks`: one type, so the same fields), with each resource's defaults, in",
        "[Remote sources](../policy-document.md#remote-sources).",
        "",
    ]
    required = set(schema.get("required", []))
    props = schema.get("properties", {})
    header = ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    walker = Reference(schema)
    for field in sorted(props):
        walker.field(field, props[field], field in required, {})
    # The top-level fields first, then one section per field that has fields below it.
    top = [r for r in walker.rows if "." not in r[0] and "[]" not in r[0]]
    out += ["## Document", ""] + header + ["| " + " | ".join(r) + " |" for r in top] + [""]
    for field in sorted(props):
        nested = [r for r in walker.rows
                  if r[0].startswith(f"`{field}.") or r[0].startswith(f"`{field}[]")]
        if not nested:
            continue
        out += [f"## `{field}`", ""] + header + ["| " + " | ".join(r) + " |" for r in nested] + [""]
    return "\n".join(out)


# --- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor mdBook and GitHub give a heading: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"`|\*\*|\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    return "".join(c if (c.isalnum() or c in "-_") else "-" if c == " " else "" for c in text)


def unfenced(text: str) -> str:
    """The text without fenced code blocks."""
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text without code blocks and inline code, where `[x](y)` is not a link."""
    return re.sub(r"`[^`\n]*`", "", unfenced(text))


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in unfenced(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(files: list[Path]) -> list[str]:
    problems = []
    for source in files:
        for m in LINK.finditer(prose(source.read_text())):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (source.parent / file_part).resolve() if file_part else source
            rel = source.relative_to(ROOT)
            if not dest.exists():
                problems.append(f"{rel}: link to {target}: no such file")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                problems.append(f"{rel}: link to {target}: no heading with that anchor")
    return problems


def link_sources() -> list[Path]:
    return [ROOT / "README.md", ROOT / "deploy" / "README.md"] + sorted(DOCS.rglob("*.md"))


# --- main ----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed pages and check links; write nothing")
    args = parser.parse_args()

    binary = cli()
    pages = {REFERENCE / f"{name}.md": render(name, schema_of(binary, name)) + "\n"
             for name in filters(binary)}
    if not args.check:
        REFERENCE.mkdir(parents=True, exist_ok=True)
        for path, text in pages.items():
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
        return 0

    failed = False
    for path, text in pages.items():
        committed = path.read_text() if path.exists() else ""
        if committed != text:
            failed = True
            rel = str(path.relative_to(ROOT))
            sys.stdout.writelines(difflib.unified_diff(
                committed.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{rel} (committed)", tofile=f"{rel} (from gatewarden schema)"))
            print(f"error: {rel} is stale: run scripts/policy_reference.py and commit the result",
                  file=sys.stderr)
    problems = broken_links([p for p in link_sources() if p.exists()])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
