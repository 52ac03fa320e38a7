#!/usr/bin/env bash
# Install the Envoy v3 API's Python modules (PyPI xds-protos) for `mesh xds`, the control plane.
#
# Why not a dependency in pyproject.toml: xds-protos also ships its own copies of
# opentelemetry/proto, opencensus and google/{api,rpc,type,...} modules. Installed into the
# venv's site-packages it silently replaces opentelemetry-proto's files with older ones (pip
# check stays quiet), and its google/__init__.py would turn the google namespace package into a
# plain one. So the wheel goes into a directory of its own, without those packages, and one
# .pth line appends that directory to the venv's path: the control plane imports envoy.*, xds.*,
# udpa.* and validate.* from there, and every other module still comes from the venv.
#
# Usage: tools/install-xds-protos.sh VENV_PYTHON TARGET_DIR. Idempotent (a stamp names the
# version). The version follows grpcio's (both are cut from one gRPC release).
set -euo pipefail

PY="$1"
TARGET="$2"
VERSION="${XDS_PROTOS_VERSION:-1.85.0}"
STAMP="$TARGET/.installed-$VERSION"

if [[ ! -f "$STAMP" ]]; then
    rm -rf "$TARGET"
    "$PY" -m pip install --quiet --no-deps --no-compile --target "$TARGET" "xds-protos==$VERSION"
    # Keep only the API's own packages; the rest already comes from the venv, at the venv's versions.
    rm -rf "$TARGET"/google "$TARGET"/opentelemetry "$TARGET"/opencensus "$TARGET"/test "$TARGET"/bin
    touch "$STAMP"
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ABS_TARGET="$(cd "$TARGET" && pwd)"
echo "$ABS_TARGET" > "$SITE/tsunagu-xds-protos.pth"
"$PY" -c 'import envoy.service.discovery.v3.ads_pb2, opentelemetry.proto.trace.v1.trace_pb2' \
    || { echo "install-xds-protos: envoy modules do not import from $ABS_TARGET" >&2; exit 1; }
echo "$ABS_TARGET"
