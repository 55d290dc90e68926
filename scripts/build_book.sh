#!/usr/bin/env bash
# Build the book so that it reads offline.
#
#   bash scripts/build_book.sh [jupyter-book build options]    e.g. -W -n --keep-going
#
# 1. Installs MathJax 3 into book/_static/mathjax/ (git-ignored), from the npm
#    registry's tarball, checked against a pinned sha512; skipped when that
#    version is already there. This is the only step that uses the network.
# 2. Runs `jupyter-book build .` with the given options and tricklib importable
#    (autodoc reads its docstrings for book/api.md). _config.yml points Sphinx's
#    `mathjax_path` at the local copy, so no page loads anything from a CDN.
set -euo pipefail

MATHJAX_VERSION=3.2.2
MATHJAX_SHA512="Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dest="book/_static/mathjax"
stamp="$dest/.mathjax-$MATHJAX_VERSION"

install_mathjax() {
    command -v npm >/dev/null || { echo "build_book.sh: npm is needed to fetch MathJax (apt-get install npm)" >&2; exit 1; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "build_book.sh: fetching mathjax@$MATHJAX_VERSION from the npm registry"
    (cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null 2>"$tmp/npm.log") \
        || { cat "$tmp/npm.log" >&2; exit 1; }
    local tarball="$tmp/mathjax-$MATHJAX_VERSION.tgz"
    local got
    got="$(openssl dgst -sha512 -binary "$tarball" | openssl base64 -A)"
    if [ "$got" != "$MATHJAX_SHA512" ]; then
        echo "build_book.sh: mathjax tarball checksum mismatch (got $got)" >&2
        exit 1
    fi
    rm -rf "$dest"
    mkdir -p "$dest"
    # es5/ is what a browser loads; leave out the SVG output and the bundles we
    # never request (tex-mml-chtml.js loads fonts, TeX extensions, the menu and
    # the accessibility components from here on demand).
    tar xzf "$tarball" -C "$dest" --strip-components=2 package/es5
    tar xzf "$tarball" -C "$dest" --strip-components=1 package/LICENSE
    (cd "$dest" && rm -rf output/svg output/svg.js tex-svg.js tex-svg-full.js tex-mml-svg.js \
        mml-svg.js tex-chtml-full.js tex-chtml-full-speech.js node-main.js)
    touch "$stamp"
    rm -rf "$tmp"
    trap - EXIT
    echo "build_book.sh: MathJax $MATHJAX_VERSION in $dest ($(du -sh "$dest" | cut -f1))"
}

[ -f "$stamp" ] && [ -f "$dest/tex-mml-chtml.js" ] || install_mathjax

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec jupyter-book build . "$@"
