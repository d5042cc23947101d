#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the seed corpus of fuzz/corpus/{dmirror,api}/.

Each seed is a short program in the harness's input format (see the
LLVMFuzzerTestOneInput of each): 8 bytes of arena layout, then steps of an
operation byte and its argument bytes.  The seeds are small and only point
libFuzzer at each operation; it finds the rest."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))


def write(sub, name, data):
    d = os.path.join(here, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


RW = struct.pack("<Q", 0)            # every run read/write, private
MIXED = struct.pack("<Q", 0x5a5a5a5a5a5a5a5b)  # shared runs, holes, RO

# fuzz_dmirror: op 11..19 = command: amode, nsel, slot, request, first page,
# ptr mode, then cpages/faults (16 bytes).
def dm_cmd(req, first=0, npages=4, slot=0, ptr=0):
    return [11, 0, npages - 1, slot, req, first, ptr] + [0] * 16

for req, name in [(0, "read"), (1, "write"), (2, "migrate_to_dev"),
                  (3, "migrate_to_sys"), (4, "snapshot"), (5, "exclusive"),
                  (6, "check_exclusive"), (7, "release"), (8, "flags"),
                  (9, "read_unlocked")]:
    write("dmirror", name, RW + bytes(dm_cmd(req)))
# migrate, write from the CPU, migrate back, check
write("dmirror", "migrate_cpu_back",
      RW + bytes(dm_cmd(2, npages=8) + [4, 0, 8] + [1] * 8 + dm_cmd(3, npages=8)
                 + [5, 0, 16]))
# two devices: migrate to 0, then to 1 (ENOENT), exclusive on 1 steals
write("dmirror", "two_devices",
      MIXED + bytes(dm_cmd(2, slot=0) + dm_cmd(2, slot=1) + dm_cmd(5, slot=1)))
# holes and PROT_NONE in the range, bad ptr, device mmap, bad calls
write("dmirror", "holes_badptr",
      MIXED + bytes([1, 2, 1] + dm_cmd(0, npages=4, ptr=6) + [8, 0, 2, 2, 2, 1]
                    + [9, 0, 0, 0, 0, 0]))

# fuzz_api: ops 0-5 arena, 6 adopt, 7 release, 8 migrate, 9 dev open,
# 10 dev close, 11 mem alloc, 12 location, 13 range_fault, 14 sim rw,
# 15 sim atomic/launch, 16 option or notifier.
write("api", "adopt_migrate_release",
      RW + bytes([9, 0, 0, 0, 0,  6, 0, 0, 7,  8, 0, 0, 0, 7,  7, 0, 0, 7]))
write("api", "adopt_bad", MIXED + bytes([6, 0, 0, 3, 12, 0, 1, 6, 0, 4, 14]))
write("api", "mem_alloc", RW + bytes([9, 0, 0, 0, 0, 11, 3, 0, 0, 0, 0, 0]))
write("api", "range_fault",
      MIXED + bytes([13, 1, 0, 0, 0, 8, 1, 1] + [1] * 64))
write("api", "sim_rw", RW + bytes([9, 0, 0, 0, 0, 6, 0, 0, 7, 14, 0, 1,
                                    0, 16, 1, 0, 0, 0, 0, 0, 0]))
write("api", "options", RW + bytes([16, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2,
                                     16, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]))
write("api", "atomic_launch", RW + bytes([9, 0, 0, 0, 0, 15, 0, 2, 0, 0, 1,
                                           15, 0, 0, 0, 0, 0, 0, 8]))
