#!/usr/bin/env bash
# The test suite's Python: a virtual environment under ~/.cache/spillway/venv (or
# $XDG_CACHE_HOME/spillway/venv) holding the pinned reference implementations. Creates it
# on first use, installs what a requirements file lists when that file changed, and prints
# the interpreter's path (./test.sh exports it as SPILLWAY_PYTHON).
#
#     scripts/python-env.sh              # gguf-py and numpy (scripts/requirements.txt)
#     scripts/python-env.sh --fixtures   # also what regenerating the fixtures needs
#                                        # (scripts/fixtures/requirements.txt: builds llama.cpp)
#
# Needs Debian's python3 and python3-venv (cross/install-deps.sh). Never touches the system
# Python: pip runs inside the environment only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "python-env: $*" >&2; exit 2; }

reqs=("$here/requirements.txt")
case "${1:-}" in
    --fixtures) reqs+=("$here/fixtures/requirements.txt") ;;
    "") ;;
    *) die "usage: $0 [--fixtures]" ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/spillway"
venv="$cache/venv"
python="$venv/bin/python"

# A venv whose interpreter no longer runs (Python upgraded, folder copied) is made anew.
if [ -e "$venv" ] && ! "$python" -I -c '' 2>/dev/null; then
    echo "python-env: $venv is broken, making it again" >&2
    rm -rf "$venv"
fi
if [ ! -x "$python" ]; then
    command -v python3 >/dev/null || die "python3 not found (cross/install-deps.sh installs it)"
    mkdir -p "$cache"
    echo "python-env: creating $venv" >&2
    # The system's python3 (Debian's), not a pyenv shim or the like ahead of it on PATH.
    base=python3
    [ -x /usr/bin/python3 ] && base=/usr/bin/python3
    "$base" -m venv "$venv" ||
        die "could not create $venv (on Debian: apt-get install python3-venv)"
fi

# Each requirements file is installed once per content: a stamp named by its hash.
for req in "${reqs[@]}"; do
    sum="$(sha256sum "$req" | cut -c1-16)"
    stamp="$venv/.spillway-$(basename "$(dirname "$req")")-$sum"
    [ -e "$stamp" ] && continue
    echo "python-env: installing ${req#"$(dirname "$here")/"} into $venv" >&2
    # Builds from source (llama-cpp-python) use both cores; pip keeps built wheels in its
    # cache, so a venv made again does not build again.
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
        "$python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 ||
        die "pip install -r $req failed (see above)"
    touch "$stamp"
done

# The check runs isolated (-I) from / so that the repository's gguf/ folder (a Rust crate)
# cannot pass for the gguf package.
(cd / && "$python" -I -c 'import gguf, numpy') ||
    die "gguf-py is not importable from $python"
echo "$python"
