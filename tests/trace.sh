#!/bin/sh
# SPDX-License-Identifier: MIT
#
# HMM_TRACE: run hmm-demo with a trace file, check that it is valid JSON in
# the Chrome trace-event format with the events libhmm promises, and draw
# it with hmm-residency (a well-formed SVG with a device's colour in it).
# Then the same JSON check for a program that exits from a thread.
# Arguments: hmm-demo, hmm-residency, a program that exits from a thread.
set -eu
demo=$1 residency=$2 thread_exit=$3
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT

HMM_TRACE="$d/demo.json" "$demo" >"$d/demo.out" 2>&1 || {
	r=$?; cat "$d/demo.out"; [ $r = 77 ] && exit 77; exit 1; }
python3 - "$d/demo.json" <<'PY'
import json, sys
ev = json.load(open(sys.argv[1]))
assert isinstance(ev, list) and ev, "not a non-empty JSON array"
names = {e["name"] for e in ev}
want = {"cpu_fault", "device_fault", "migrate_to_device",
        "migrate_to_system", "invalidate_migrate", "thread_name",
        "process_name"}
missing = want - names
assert not missing, "missing events: %s" % sorted(missing)
for e in ev:
    if e["ph"] == "X":
        for k in ("ts", "dur", "pid", "tid", "cat"):
            assert k in e, "%s lacks %s" % (e["name"], k)
        assert e["dur"] >= 0 and e["ts"] >= 0
        a = e["args"]
        int(a["addr"], 16); int(a["pages"]); int(a["span"]); int(a["dev"])
    else:
        assert e["ph"] == "M", e
devs = {e["args"]["dev"] for e in ev if e["name"] == "device_fault"}
assert devs and min(devs) >= 0, "device faults name no device"
print("trace: %d events, %d kinds" % (len(ev), len(names)))
PY

"$residency" --out "$d/r.svg" "$d/demo.json"
python3 - "$d/r.svg" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
assert root.tag == ns + "svg", root.tag
fills = [r.get("fill") for r in root.iter(ns + "rect")]
assert "#d9d9d9" in fills, "no system memory area"
assert any(r.get("class", "").startswith("dev") for r in root.iter(ns + "rect")), \
    "no device residency drawn"
print("residency: %d rectangles" % len(fills))
PY
"$residency" "$d/nonexistent.json" 2>/dev/null && { echo "a missing trace was accepted"; exit 1; }

HMM_TRACE="$d/thread.json" "$thread_exit" >"$d/thread.out" 2>&1 || {
	r=$?; cat "$d/thread.out"; [ $r = 77 ] && exit 77; exit 1; }
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$d/thread.json" || {
	echo "the trace of a program that exits from a thread is not valid JSON"
	exit 1; }
echo "trace: ok"
