#!/usr/bin/env python3
"""Bytes of code reachable from some functions of a firmware ELF (for example everything the
training loop can run): a call graph from the disassembly (branch targets: `bl`, `b`, `b.n`,
`beq.w`, `cbz`, ... in GNU's or LLVM's spelling; `adr` addresses; literal-pool words and
`movw`/`movt` immediates that are function addresses, which is how the tape's backward function
pointers are stored), walked from the roots, leaving out the functions named in --exclude and
what only they reach.

Functions are told apart by address, not by name: generic instances and closures that share a
demangled name are counted each, and aliases (several names at one address) once. A root or
--exclude name matches every function of that (demangled) name; a name that matches none (a
typo, or a function the compiler inlined everywhere) is an error (exit 2).

Usage: tools/code-size.py ELF ROOT[,ROOT...] [--exclude FN[,FN...]] [--list] [--max BYTES]
  --list       also print each reachable function's size and name, largest first
  --max BYTES  exit 1 when the total is over BYTES (the total is printed either way)
Example: tools/code-size.py target/thumbv7em-none-eabihf/release/xor xor::train \
             --exclude mote_embedded::fail
"""
import argparse
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


def names(text):
    return [n for n in text.split(",") if n]


ap = argparse.ArgumentParser(description="Bytes of code reachable from some functions of an ELF.")
ap.add_argument("elf")
ap.add_argument("roots", type=names, help="ROOT[,ROOT...]: demangled function names")
ap.add_argument("--exclude", type=names, default=[], help="FN[,FN...]: left out, with what only "
                "they reach")
ap.add_argument("--list", action="store_true", help="list the reachable functions")
ap.add_argument("--max", type=int, default=None, help="exit 1 when the total is over BYTES")
opts = ap.parse_args()

# Functions by address (Thumb bit cleared): their size and their names.
size, fnames = {}, {}
nm = subprocess.run([tool("nm"), "-S", "-C", "--defined-only", opts.elf],
                    capture_output=True, text=True, check=True).stdout
for line in nm.splitlines():
    p = line.split(None, 3)
    if len(p) == 4 and p[2] in ("t", "T", "w", "W"):
        addr = int(p[0], 16) & ~1
        size[addr] = max(size.get(addr, 0), int(p[1], 16))
        # LLVM's nm keeps the legacy mangling's hash (`::h0123...`) that GNU's drops.
        fnames.setdefault(addr, []).append(re.sub(r"::h[0-9a-f]{16}$", "", p[3]))
starts = sorted(size)
by_name = {}
for addr, ns in fnames.items():
    for n in ns:
        by_name.setdefault(n, set()).add(addr)


def resolve(wanted, what):
    """The addresses of the functions named `wanted`; exits naming any that is not there."""
    missing = [n for n in wanted if n not in by_name]
    if missing:
        print(f"code-size: no function named {', '.join(missing)} in {opts.elf} ({what}; "
              "misspelt, or inlined into its callers?)", file=sys.stderr)
        sys.exit(2)
    return set().union(*(by_name[n] for n in wanted)) if wanted else set()


roots = resolve(opts.roots, "root")
exclude = resolve(opts.exclude, "--exclude")


def owner(addr):
    """The start of the function whose code holds `addr`, or None."""
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and addr < starts[i] + max(size[starts[i]], 1):
        return starts[i]
    return None


dis = subprocess.run([tool("objdump"), "-d", "--no-show-raw-insn", opts.elf],
                     capture_output=True, text=True, check=True).stdout
# Branches with a direct target: b, bl, blx, each with an optional condition and `.n`/`.w`
# (GNU writes `b.n`, `bcc.w`; LLVM `b`, `blo.w`), cbz/cbnz; and adr. GNU's objdump writes a
# target as `1234 <f+0x10>`, LLVM's as `0x1234 <f+0x10>`.
branch = re.compile(r"(?:bl?x?(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?"
                    r"(?:\.[nw])?|cbn?z|adr(?:\.[nw])?)")
target = re.compile(r"(?:^|[\s,])(?:0x)?([0-9a-f]+) <")
raw = re.compile(r"[0-9a-f]{2}(?: [0-9a-f]{2})*")  # LLVM shows a data word's bytes
refs, cur = {}, None
movw = {}  # register -> (immediate, paired with a movt yet)


def end_function():
    """A `movw` never completed by a `movt` is a whole (16-bit) value."""
    for imm, paired in movw.values():
        if not paired:
            add_ref(imm)
    movw.clear()


def add_ref(value, exact=True):
    """A reference from the current function to `value` when that is a function's address
    (Thumb bit set) or, for a branch, any address inside one."""
    if exact:
        if not value & 1 or (value & ~1) not in size:
            return
        value &= ~1
    o = owner(value)
    if o is not None and o != cur:
        refs[cur].add(o)


for line in dis.splitlines():
    fields = [f.strip() for f in line.split("\t")]
    m = re.fullmatch(r"([0-9a-f]+):", fields[0])
    if len(fields) < 2 or not m:
        continue
    # Each instruction belongs to the function whose [start, start + size) holds it: the
    # padding the linker puts between functions (which decodes as, say, `bmi.n`) to none.
    o = owner(int(m.group(1), 16))
    if o != cur:
        end_function()
        cur = o
        if cur is not None:
            refs.setdefault(cur, set())
    if cur is None:
        continue
    fields = [f for f in fields[1:] if f and not raw.fullmatch(f)]
    if not fields:
        continue
    op, args = fields[0], " ".join(fields[1:])
    if branch.fullmatch(op):
        t = target.search(args)
        if t:
            add_ref(int(t.group(1), 16), exact=False)
    elif op == ".word":
        add_ref(int(args.split()[0], 0))
    elif op in ("movw", "movt", "mov", "mov.w", "movs"):
        m = re.match(r"(r\d+|ip|lr|sl|fp), #(0x[0-9a-f]+|\d+)\b", args)
        if not m:
            continue
        reg, imm = m.group(1), int(m.group(2), 0)
        if op == "movw":
            prev = movw.get(reg)
            if prev and not prev[1]:
                add_ref(prev[0])
            movw[reg] = (imm, False)
        elif op == "movt":
            if reg in movw:
                add_ref(movw[reg][0] | imm << 16)
                movw[reg] = (movw[reg][0], True)
        else:
            add_ref(imm)
end_function()

seen, stack = set(), list(roots)
while stack:
    f = stack.pop()
    if f in seen or f in exclude:
        continue
    seen.add(f)
    stack.extend(refs.get(f, ()))
total = sum(size[f] for f in seen)
print(total)
if opts.list:
    for f in sorted(seen, key=lambda f: -size[f]):
        print(f"{size[f]:>7} {' = '.join(sorted(set(fnames[f])))}")
if opts.max is not None and total > opts.max:
    print(f"code-size: {total} B reachable from {','.join(opts.roots)}, over the limit of "
          f"{opts.max} B", file=sys.stderr)
    sys.exit(1)
