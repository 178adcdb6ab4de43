#!/usr/bin/env bash
# Option parsing for recipe scripts (sourced, not executed).
#
# Every variable the sourcing script defined before sourcing this file can be overridden from
# the command line as --name value or --name=value (dashes and underscores are equivalent:
# --stop-stage = --stop_stage). --help prints ${help_message} and the current values.
# Unknown options are an error naming the option; positional arguments are left in "$@".

__sitok_show_help() {
    echo -e "${help_message:-}"
    echo
    echo "Options (current values):"
    local v
    for v in ${__sitok_opts}; do printf '  --%-22s %s\n' "${v}" "${!v}"; done
}

# options = the variables defined by the caller before sourcing (lower-case names only)
__sitok_opts=$(compgen -v | grep -E '^[a-z][a-z0-9_]*$' | grep -vE '^(help_message)$' | tr '\n' ' ')

__sitok_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h) __sitok_show_help; exit 0 ;;
        --*=*) __sitok_name="${1%%=*}"; __sitok_value="${1#*=}"; shift ;;
        --*)
            __sitok_name="$1"
            [ $# -ge 2 ] || { echo "$0: option $1 needs a value (try --help)" >&2; exit 1; }
            __sitok_value="$2"; shift 2 ;;
        *) __sitok_args+=("$1"); shift; continue ;;
    esac
    __sitok_name="${__sitok_name#--}"; __sitok_name="${__sitok_name//-/_}"
    # (a pattern match, not "printf | grep -q": grep -q exits at the first match, printf may then
    # die of SIGPIPE, and under "set -o pipefail" a known option would be reported unknown)
    if [[ " ${__sitok_opts} " != *" ${__sitok_name} "* ]]; then
        echo "$0: unknown option --${__sitok_name} (try --help)" >&2
        exit 1
    fi
    printf -v "${__sitok_name}" '%s' "${__sitok_value}"
done
set -- ${__sitok_args[@]+"${__sitok_args[@]}"}
unset __sitok_name __sitok_value __sitok_args
