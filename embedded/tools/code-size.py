#!/usr/bin/env python3
"""Bytes of code reachable from some functions of a firmware ELF (for example everything the
training loop can run): a call graph from the disassembly (`bl`/`b` targets, literal-pool words
and `movw` immediates that are function addresses, which is how the tape's backward function
pointers are stored), walked from the roots, leaving out the functions named in --exclude and
what only they reach.

Usage: tools/code-size.py ELF ROOT[,ROOT...] [--exclude FN[,FN...]] [--list]
Example: tools/code-size.py target/thumbv7em-none-eabihf/release/xor xor::train \
             --exclude mote_embedded::fail
"""
import bisect
import re
import shutil
import subprocess
import sys


def tool(name):
    """GNU binutils for Arm (`binutils-arm-none-eabi`) where installed, else LLVM's."""
    for t in ("arm-none-eabi-" + name, "llvm-" + name):
        if shutil.which(t):
            return t
    sys.exit(f"code-size: neither arm-none-eabi-{name} nor llvm-{name} found "
             "(apt-get install binutils-arm-none-eabi, or llvm)")


args = [a for a in sys.argv[1:] if not a.startswith("--")]
flags = sys.argv[1:]
elf, roots = args[0], args[1].split(",")
exclude = set()
if "--exclude" in flags:
    exclude = set(flags[flags.index("--exclude") + 1].split(","))
listing = "--list" in flags

syms = []
nm = subprocess.run([tool("nm"), "-S", "-C", "--defined-only", elf],
                    capture_output=True, text=True, check=True).stdout
for line in nm.splitlines():
    p = line.split(None, 3)
    if len(p) == 4 and p[2].lower() in "tw":
        # LLVM's nm keeps the legacy mangling's hash (`::h0123...`) that GNU's drops.
        syms.append((int(p[0], 16) & ~1, int(p[1], 16), re.sub(r"::h[0-9a-f]{16}$", "", p[3])))
syms.sort()
starts = [s[0] for s in syms]
start_set = set(starts)
size = {s[2]: s[1] for s in syms}


def owner(addr):
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and addr < syms[i][0] + max(syms[i][1], 1):
        return syms[i][2]
    return None


dis = subprocess.run([tool("objdump"), "-d", "--no-show-raw-insn", elf],
                     capture_output=True, text=True, check=True).stdout
refs, cur = {}, None
# GNU's objdump writes a target as `1234 <f>`, LLVM's as `0x1234 <f>`.
branch = re.compile(r"\bb(?:l|lx|\.w|eq\.w|ne\.w|[a-z]{2}\.w)?\s+(?:0x)?([0-9a-f]+) <")
for line in dis.splitlines():
    m = re.match(r"^([0-9a-f]+) <", line)
    if m:
        cur = owner(int(m.group(1), 16))
        refs.setdefault(cur, set())
        continue
    if cur is None:
        continue
    targets = [int(t, 16) for t in branch.findall(line)]
    m = re.search(r"\.word\s+0x([0-9a-f]+)", line)
    if m:
        targets.append(int(m.group(1), 16) & ~1)
    m = re.search(r"\bmovw?\s+r\d+, #(\d+)", line)
    if m and int(m.group(1)) & 1 and (int(m.group(1)) & ~1) in start_set:
        targets.append(int(m.group(1)) & ~1)
    for t in targets:
        o = owner(t)
        if o and o != cur:
            refs[cur].add(o)

seen, stack = set(), list(roots)
while stack:
    f = stack.pop()
    if f in seen or f not in size or f in exclude:
        continue
    seen.add(f)
    stack.extend(refs.get(f, ()))
print(sum(size[f] for f in seen))
if listing:
    for f in sorted(seen, key=lambda f: -size[f]):
        print(f"{size[f]:>7} {f}")
