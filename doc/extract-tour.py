#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Turn the usage example that opens include/hmm/hmm.h into a program.

The example is the tab-indented block of the header's first comment,
between "A short tour" and the first paragraph after it.  Its #include
lines go first, the rest becomes the body of a function that main()
calls, so that the test suite builds (with -Werror) and runs exactly
what the header shows.

    extract-tour.py HEADER OUTPUT.c
"""
import sys


def main():
    header, output = sys.argv[1], sys.argv[2]
    with open(header, encoding="utf-8") as f:
        text = f.read()
    start = text.find(" * A short tour")
    if start < 0:
        sys.exit("extract-tour.py: no 'A short tour' in " + header)
    lines = []
    started = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith(" *\t"):
            started = True
            lines.append(line[3:])
        elif line.strip() == "*":
            if started:
                lines.append("")
        elif started:
            break  # the first line of prose after the example
    if not lines:
        sys.exit("extract-tour.py: the tour has no code in " + header)
    includes = [l for l in lines if l.startswith("#include")]
    body = [l for l in lines if not l.startswith("#include")]
    with open(output, "w", encoding="utf-8") as f:
        f.write("/* Generated from the opening comment of hmm.h by "
                "doc/extract-tour.py. */\n")
        f.write("#include <stdint.h>\n#include <stdio.h>\n"
                "#include <stdlib.h>\n")
        f.write("\n".join(includes) + "\n\n")
        f.write("static int tour(void)\n{\n")
        for l in body:
            f.write(("\t" + l).rstrip() + "\n")
        # No userfaultfd on this machine: a skip, not a failure.
        f.write("\treturn 0;\n}\n\nint main(void)\n{\n"
                "\tif (hmm_caps() < 0) {\n"
                "\t\tfprintf(stderr, \"tour: libhmm cannot start "
                "here\\n\");\n"
                "\t\treturn 77;\n\t}\n"
                "\treturn tour();\n}\n")


if __name__ == "__main__":
    main()
