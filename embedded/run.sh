#!/usr/bin/env bash
# Builds the four firmware programs for the Cortex-M4F (thumbv7em-none-eabihf) and runs each
# on QEMU's mps2-an386 (see .cargo/config.toml); installs QEMU and the Rust target if missing.
# Prints each program's one-line summary; exits non-zero if any program fails its checks.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v qemu-system-arm >/dev/null 2>&1; then
    echo "embedded: installing qemu-system-arm" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-system-arm >/dev/null
fi
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf >&2
fi

cargo build --release --locked --bins --quiet

failed=0
passed=0
for bin in xor digits finetune cnn; do
    elf="target/thumbv7em-none-eabihf/release/$bin"
    # The same command as the cargo runner (.cargo/config.toml).
    if out=$(timeout 120 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" 2>&1); then
        status=0
    else
        status=$?
    fi
    printf '%s\n' "$out" | tail -n 1
    if [ "$status" -ne 0 ]; then
        echo "embedded: $bin FAILED (exit $status)" >&2
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
done
echo "embedded: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
