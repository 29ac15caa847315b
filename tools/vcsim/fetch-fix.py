"""Patch govmomi 0.24.2's simulator so PropertyCollector.Fetch survives an unset property.

Upstream indexes ``obj.MissingSet[0]`` when ``PropSet`` is empty; for an unset
top-level property (``vm.snapshot`` with no snapshots) ``MissingSet`` is empty
too, the handler panics and the server drops the connection. pyVmomi 8+ reads
single properties through Fetch, so return an empty FetchResponse instead.
Idempotent: a file already patched is left alone; a file whose shape changed fails loudly.
"""

import sys
from pathlib import Path

OLD = """	if len(obj.PropSet) == 0 {
		fault := obj.MissingSet[0].Fault"""
NEW = """	if len(obj.PropSet) == 0 && len(obj.MissingSet) == 0 {
		body.Res = &internal.FetchResponse{}
		return body
	}
	if len(obj.PropSet) == 0 {
		fault := obj.MissingSet[0].Fault"""


def main(path: str) -> int:
    src = Path(path)
    text = src.read_text()
    if NEW in text:
        return 0
    if text.count(OLD) != 1:
        print(f"fetch-fix: unexpected property_collector.go shape in {path}", file=sys.stderr)
        return 1
    src.write_text(text.replace(OLD, NEW))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
