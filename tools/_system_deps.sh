# Sourced by tools/_env.sh: the Debian packages the end-to-end tests drive for real
# (a headless browser for the chat page, a Prometheus server for verifyd's metrics, curl).
# Installed only when missing and only where apt-get can run as root; any failure is
# tolerated, and the tests that need a missing program skip saying which one.
_edgespec_missing=()
command -v chromium >/dev/null 2>&1 || _edgespec_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || _edgespec_missing+=(chromium-driver)
command -v prometheus >/dev/null 2>&1 || _edgespec_missing+=(prometheus)
command -v curl >/dev/null 2>&1 || _edgespec_missing+=(curl)
if [ "${#_edgespec_missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "edgespec: installing ${_edgespec_missing[*]} for the browser and Prometheus tests" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                "${_edgespec_missing[@]}"; } >/dev/null 2>&1; then
        echo "edgespec: could not install ${_edgespec_missing[*]}; their tests will skip" >&2
    fi
fi
unset _edgespec_missing
