#!/bin/sh
# SPDX-License-Identifier: MIT
# Run the program built from the usage example of hmm.h (extract-tour.py)
# and check that it printed what the example says: 7.  Exit 77 (skip) when
# the program could not start libhmm (no userfaultfd here).
out=$("$1")
rc=$?
[ "$rc" -eq 77 ] && exit 77
if [ "$rc" -ne 0 ] || [ "$out" != 7 ]; then
	echo "check-tour.sh: exit $rc, printed '$out', expected 7" >&2
	exit 1
fi
echo "the tour in hmm.h printed 7"
