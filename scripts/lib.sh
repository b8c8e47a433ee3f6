# Shared helpers for kiln's scripts. Sourced, not run.

# Log to stderr with the script's name, so CI output says who spoke.
say() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Install Debian packages that are missing (and only those), so re-runs are instant.
apt_ensure() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        die "missing Debian packages: ${missing[*]}; install them with: apt-get install -y ${missing[*]}"
    fi
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q >/dev/null || die "apt-get update failed; run it by hand and retry"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "could not install ${missing[*]}; try: apt-get install -y ${missing[*]}"
}

# Install Python packages listed in a requirements file, only when one is missing.
pip_ensure() {
    local req=$1
    python3 - "$req" <<'PY' && return 0
import sys, importlib.metadata as md, re
for line in open(sys.argv[1]):
    name = re.split(r'[<>=!~ ;\[]', line.strip(), maxsplit=1)[0]
    if not name or name.startswith('#'):
        continue
    try:
        md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
PY
    say "installing Python packages from $req"
    python3 -m pip install -q --disable-pip-version-check -r "$req" \
        || die "could not install the Python packages; try: python3 -m pip install -r $req"
}
