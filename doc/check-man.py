#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Check libhmm's manual pages against the headers and the build.

    check-man.py pages  SRCDIR    every public function and tool has a page
    check-man.py render SRCDIR    every page renders without a warning

"pages" parses the installed headers (the install_headers() call of the
top meson.build) for every function they declare or define, and checks
that doc/man has a page for it (a page of its own, or a .so link to the
page that documents it, whose NAME and SYNOPSIS name it); that every
error code the comment above the declaration gives (-EXXX) is listed in
that page's ERRORS section; that every installed program (executable()
with install : true) has a section 1 page; that each page has the
sections its section needs; and that doc/meson.build installs every page.

"render" formats every page with groff -man -ww -z and man --warnings
(both when present) and fails on any diagnostic.  It exits 77 (skip)
when neither program is installed.

Exit status: 0 all good, 1 a problem (each one printed), 77 skip.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SECTIONS = {
    "1": ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"],
    "3": ["NAME", "SYNOPSIS", "DESCRIPTION", "RETURN VALUE", "ERRORS",
          "SEE ALSO"],
    "7": ["NAME", "DESCRIPTION", "SEE ALSO"],
}

problems = []


def problem(msg):
    problems.append(msg)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def meson_call_args(text, func):
    """The argument text of every call of @func in meson source @text."""
    for m in re.finditer(r"\b%s\s*\(" % func, text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                depth -= 1
            i += 1
        yield text[m.end():i - 1]


def installed_headers(srcdir):
    top = read(os.path.join(srcdir, "meson.build"))
    headers = []
    for args in meson_call_args(top, "install_headers"):
        headers += re.findall(r"'([^']+\.h)'", args)
    if not headers:
        problem("no install_headers() in meson.build")
    return [os.path.join(srcdir, h) for h in headers]


def installed_programs(srcdir):
    progs = []
    for root, dirs, files in os.walk(srcdir):
        dirs[:] = [d for d in dirs
                   if not d.startswith((".", "build")) and d != "subprojects"]
        if "meson.build" not in files:
            continue
        text = read(os.path.join(root, "meson.build"))
        for args in meson_call_args(text, "executable"):
            m = re.match(r"\s*'([^']+)'", args)
            if m and re.search(r"install\s*:\s*true", args):
                progs.append(m.group(1))
    return progs


def header_functions(path):
    """(name, error codes of the comment above it) for every function
    declared or defined at file scope in the header at @path."""
    text = read(path)
    # C++ guards hold an extern "C" { ... } that is no scope of C's.
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    out = []
    depth = 0
    last_end = 0        # end of the previous declaration at file scope
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "#" and (i == 0 or text[i - 1] == "\n"):
            # a preprocessor line, with its continuations
            while i < n:
                j = text.find("\n", i)
                if j < 0:
                    i = n
                    break
                if text[j - 1] != "\\":
                    i = j + 1
                    break
                i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                last_end = i + 1
        elif c == ";" and depth == 0:
            last_end = i + 1
        elif depth == 0:
            m = re.compile(r"\b(hmm_[a-z0-9_]+)\s*\(").match(text, i)
            if m and not re.match(r"\w", text[i - 1]):
                # not a function pointer "(*name)" (that would not
                # match), not a call: at file scope this is a
                # declaration or definition.
                gap = text[last_end:i]
                comments = re.findall(r"/\*.*?\*/", gap, flags=re.S)
                codes = set()
                if comments:
                    codes = set(re.findall(r"-(E[A-Z0-9]+)\b",
                                           comments[-1]))
                out.append((m.group(1), codes))
                # skip the parameter list
                k, d = m.end(), 1
                while k < n and d:
                    if text[k] == "(":
                        d += 1
                    elif text[k] == ")":
                        d -= 1
                    k += 1
                i = k
                continue
        i += 1
    return out


def page_sections(text):
    """Section name -> its text, for a roff man page."""
    secs = {}
    name = None
    for line in text.splitlines():
        m = re.match(r'\.SH\s+"?([^"]+?)"?\s*$', line)
        if m:
            name = m.group(1)
            secs[name] = ""
        elif name:
            secs[name] += line + "\n"
    return secs


def plain(roff):
    """Roff text with font escapes and the escaped minus removed."""
    roff = re.sub(r"\\f[BIRP]|\\f\(..|\\&", "", roff)
    return roff.replace("\\-", "-")


def check_pages(srcdir):
    mandir = os.path.join(srcdir, "doc", "man")
    files = sorted(os.listdir(mandir))
    pages = {}          # file name -> text
    for f in files:
        if re.match(r".+\.[137]$", f):
            pages[f] = read(os.path.join(mandir, f))
        else:
            problem("doc/man/%s: not a page of section 1, 3 or 7" % f)

    def target(f):
        """The page that documents @f (following one .so link)."""
        text = pages[f]
        m = re.match(r"\.so\s+man([137])/(\S+)\s*$", text.strip())
        if not m:
            return f, text
        t = m.group(2)
        if t not in pages or not t.endswith("." + m.group(1)):
            problem("doc/man/%s: .so to %s, which is not in doc/man"
                    % (f, m.group(0)))
            return None, None
        if pages[t].lstrip().startswith(".so"):
            problem("doc/man/%s: .so to another .so link" % f)
            return None, None
        return t, pages[t]

    # Every real page: its sections, a .TH that matches its name.
    for f, text in pages.items():
        if text.lstrip().startswith(".so"):
            target(f)
            continue
        name, sec = f.rsplit(".", 1)
        th = re.search(r"^\.TH\s+(\S+)\s+(\S+)", text, flags=re.M)
        if not th or plain(th.group(1)).lower() != name.lower() or \
           th.group(2) != sec:
            problem("doc/man/%s: .TH does not name %s(%s)" % (f, name, sec))
        secs = page_sections(text)
        for s in SECTIONS[sec]:
            if s not in secs:
                problem("doc/man/%s: no %s section" % (f, s))

    # Every public function: a page, naming it, listing its errors.
    nfunc = 0
    for h in installed_headers(srcdir):
        for fn, codes in header_functions(h):
            nfunc += 1
            f = fn + ".3"
            if f not in pages:
                problem("%s: %s() has no page (doc/man/%s)"
                        % (os.path.basename(h), fn, f))
                continue
            t, text = target(f)
            if not t:
                continue
            secs = page_sections(text)
            if not re.search(r"\b%s\b" % fn,
                             plain(secs.get("NAME", ""))):
                problem("doc/man/%s: NAME does not list %s" % (t, fn))
            if not re.search(r"\b%s\s*\(" % fn,
                             plain(secs.get("SYNOPSIS", ""))):
                problem("doc/man/%s: SYNOPSIS does not declare %s()"
                        % (t, fn))
            errors = plain(secs.get("ERRORS", ""))
            for code in sorted(codes):
                if not re.search(r"\b%s\b" % code, errors):
                    problem("doc/man/%s: ERRORS does not list %s, which "
                            "%s says %s() returns"
                            % (t, code, os.path.basename(h), fn))
    if nfunc < 50:
        problem("found only %d functions in the headers: is the parser "
                "broken?" % nfunc)

    # Every installed program: a section 1 page.
    progs = installed_programs(srcdir)
    for p in progs:
        if p + ".1" not in pages:
            problem("program %s has no page (doc/man/%s.1)" % (p, p))

    # Every page installed.
    build = read(os.path.join(srcdir, "doc", "meson.build"))
    for f in pages:
        if not re.search(r"'man/%s'" % re.escape(f), build):
            problem("doc/meson.build does not install man/%s" % f)

    print("check-man: %d pages, %d functions in %d headers, %d programs"
          % (len(pages), nfunc, len(installed_headers(srcdir)), len(progs)))


def check_render(srcdir):
    mandir = os.path.join(srcdir, "doc", "man")
    groff = shutil.which("groff")
    man = shutil.which("man")
    if not groff and not man:
        print("check-man: neither groff nor man is installed: skipped "
              "(scripts/setup.sh installs groff-base and man-db)")
        sys.exit(77)
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80",
               MAN_KEEP_FORMATTING="0")
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        # .so links name man3/page.3: lay the pages out as installed.
        for f in os.listdir(mandir):
            sec = f.rsplit(".", 1)[-1]
            os.makedirs(os.path.join(tmp, "man" + sec), exist_ok=True)
            shutil.copy(os.path.join(mandir, f),
                        os.path.join(tmp, "man" + sec, f))
        for sub in sorted(os.listdir(tmp)):
            for f in sorted(os.listdir(os.path.join(tmp, sub))):
                rel = os.path.join(sub, f)
                cmds = []
                if groff:
                    cmds.append([groff, "-man", "-ww", "-z", "-s", "-t",
                                 rel])
                if man:
                    cmds.append([man, "--warnings", "-E", "UTF-8", "-l",
                                 rel])
                for cmd in cmds:
                    r = subprocess.run(cmd, cwd=tmp, env=env,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
                    if r.returncode or r.stderr.strip():
                        problem("%s: %s: exit %d: %s"
                                % (rel, os.path.basename(cmd[0]),
                                   r.returncode, r.stderr.strip()))
                count += 1
    print("check-man: rendered %d pages with %s" %
          (count, " and ".join(p for p in ("groff" if groff else "",
                                           "man" if man else "") if p)))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("pages", "render"):
        sys.exit("usage: check-man.py pages|render SRCDIR")
    srcdir = sys.argv[2]
    if sys.argv[1] == "pages":
        check_pages(srcdir)
    else:
        check_render(srcdir)
    for p in problems:
        print("check-man: " + p)
    if problems:
        print("check-man: %d problem(s)" % len(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
