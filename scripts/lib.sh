# Shared by the set-up scripts (sourced, not run).

say() { printf '%s: %s\n' "${SAY_AS:-agentmon}" "$*" >&2; }

# Installs the Debian packages of "$@" that are not installed yet (nothing else).
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
