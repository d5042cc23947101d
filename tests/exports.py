#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# libhmm.so exports exactly the public functions of the installed headers
# and the libc functions it interposes (src/libhmm.map), nothing internal.
# Arguments: libhmm.so, the source directory.
import glob
import os
import re
import shutil
import subprocess
import sys

lib, src = sys.argv[1], sys.argv[2]
if not shutil.which("nm"):
    print("SKIP: no nm")
    sys.exit(77)
out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                     capture_output=True, text=True).stdout
exported = {l.split()[-1].split("@")[0] for l in out.splitlines()
            if len(l.split()) >= 3 and l.split()[1] in "TWiV"}

api = set()
for h in glob.glob(os.path.join(src, "include", "hmm", "*.h")):
    # hmm_cuda.h is the header of another library, libhmm-cuda.
    if os.path.basename(h) == "hmm_cuda.h":
        continue
    text = open(h).read()
    for m in re.finditer(r"^([a-z].*?)\b(hmm_[a-z0-9_]+)\s*\(", text, re.M):
        if "static inline" in m.group(1) or m.group(1).startswith("typedef"):
            continue
        api.add(m.group(2))

mapfile = open(os.path.join(src, "src", "libhmm.map")).read()
mapfile = re.sub(r"/\*.*?\*/", "", mapfile, flags=re.S)
listed = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*);", mapfile, re.M))
libc = {n for n in listed if not n.startswith("hmm_")}

bad = []
internal = sorted(n for n in exported if n.startswith("hmm__"))
if internal:
    bad.append("internal symbols exported: %s" % internal[:10])
missing = sorted(api - exported)
if missing:
    bad.append("public functions not exported: %s" % missing)
extra = sorted(exported - api - libc)
if extra:
    bad.append("exported but neither public nor interposed: %s" % extra)
unlisted = sorted((n for n in listed if n.startswith("hmm_")), key=str)
stale = sorted(set(unlisted) - api)
if stale:
    bad.append("src/libhmm.map lists functions the headers lack: %s" % stale)
if not libc <= exported:
    bad.append("interposed functions not exported: %s"
               % sorted(libc - exported))
if bad:
    print("\n".join(bad))
    sys.exit(1)
print("exports: %d public functions, %d interposed libc functions, "
      "nothing internal" % (len(api), len(libc)))
