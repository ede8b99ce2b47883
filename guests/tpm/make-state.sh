#!/bin/sh
# How guests/tpm/tpm2-00.permall was made (once; it is committed so that every capture starts from
# the same manufactured TPM 2.0: the same endorsement key and EK certificate every run). swtpm's
# manufacturing draws random seeds, so running this again gives ANOTHER TPM identity: only do it on
# purpose, and re-record the baselines of the TPM profiles.
#   sh guests/tpm/make-state.sh [OUTDIR]     (Debian packages swtpm, swtpm-tools)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swtpm_setup --tpm2 --tpmstate "$work" --createek --create-ek-cert --create-platform-cert --lock-nvram --overwrite
cp "$work/tpm2-00.permall" "$out/tpm2-00.permall"
