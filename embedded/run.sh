#!/usr/bin/env bash
# Builds the six firmware programs for the Cortex-M4F (thumbv7em-none-eabihf) and runs each
# on QEMU's mps2-an386 (see .cargo/config.toml); installs what is missing (QEMU, Arm binutils
# for tools/code-size.py, python3, the Rust target). Prints each program's one-line summary,
# and for xor the training code's size; exits non-zero if any program fails its checks or xor's
# training code is over its 20 KB target.
set -euo pipefail
cd "$(dirname "$0")"

# xor's flash target: the training code (what `xor::train` reaches, error printing left out,
# as tools/code-size.py counts it) within AIfES's ~20 KB.
XOR_CODE_TARGET=20480

# Debian packages for what is missing: QEMU, and for tools/code-size.py python3 and either
# GNU's Arm binutils or LLVM's nm and objdump.
missing=()
command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! { command -v arm-none-eabi-nm && command -v arm-none-eabi-objdump; } >/dev/null 2>&1 &&
    ! { command -v llvm-nm && command -v llvm-objdump; } >/dev/null 2>&1; then
    missing+=(binutils-arm-none-eabi)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "embedded: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# (Captured first: with pipefail, `grep -q` closing the pipe early could fail the test.)
machines=$(qemu-system-arm -machine help 2>/dev/null || true)
if ! grep -q '^mps2-an386 ' <<<"$machines"; then
    echo "embedded: $(command -v qemu-system-arm) ($(qemu-system-arm --version | head -n 1))" \
        "has no mps2-an386 machine (the Cortex-M4F board these programs run on): install a" \
        "newer QEMU (Debian 12's qemu-system-arm 7.2 has it)" >&2
    exit 1
fi

if command -v rustup >/dev/null 2>&1; then
    if ! grep -qx thumbv7em-none-eabihf <<<"$(rustup target list --installed)"; then
        rustup target add thumbv7em-none-eabihf >&2
    fi
elif ! [ -d "$(rustc --print sysroot)/lib/rustlib/thumbv7em-none-eabihf" ]; then
    echo "embedded: rustup not found, and this Rust ($(command -v rustc)) has no" \
        "thumbv7em-none-eabihf target: install rustup (https://rustup.rs) and run" \
        "'rustup target add thumbv7em-none-eabihf', or add the target to this Rust" >&2
    exit 1
fi

cargo build --release --locked --bins --quiet

failed=0
passed=0
qemu_err=$(mktemp)
trap 'rm -f "$qemu_err"' EXIT
for bin in xor digits finetune cnn attention lstm; do
    elf="target/thumbv7em-none-eabihf/release/$bin"
    # The same command as the cargo runner (.cargo/config.toml). The program writes to QEMU's
    # stdout (semihosting); QEMU's own messages go to stderr, kept apart.
    if out=$(timeout 120 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
        2>"$qemu_err"); then
        status=0
    else
        status=$?
    fi
    # The program's summary line (`NAME: ok ...`, `NAME: FAIL ...`, or `FAIL: ...` from an
    # error or a panic): its last line of output.
    line=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 1 || true)
    echo "${line:-$bin: (no output)}"
    if [ -s "$qemu_err" ]; then
        sed "s/^/embedded: $bin: qemu: /" "$qemu_err" >&2
    fi
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 124 ] && echo "embedded: $bin timed out (120 s)" >&2
        echo "embedded: $bin FAILED (exit $status)" >&2
        failed=$((failed + 1))
        continue
    fi
    if [ "$bin" = xor ]; then
        # The third target, checked on the ELF (the firmware cannot see its call graph).
        if code=$(python3 tools/code-size.py "$elf" xor::train --exclude mote_embedded::fail); then
            if [ "$code" -le "$XOR_CODE_TARGET" ]; then
                echo "xor: ok training code $code B (target $XOR_CODE_TARGET, tools/code-size.py)"
            else
                echo "xor: FAIL training code $code B (target $XOR_CODE_TARGET, tools/code-size.py)"
                echo "embedded: xor FAILED (training code over the target)" >&2
                failed=$((failed + 1))
                continue
            fi
        else
            echo "embedded: xor FAILED (tools/code-size.py could not measure its training code)" >&2
            failed=$((failed + 1))
            continue
        fi
    fi
    passed=$((passed + 1))
done
echo "embedded: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
