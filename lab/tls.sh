#!/usr/bin/env bash
# A private CA and one server certificate it signs, for the lab and the benchmark:
#   lab/tls.sh DIR SAN...     e.g. lab/tls.sh .cache/lab-tls IP:127.0.0.1 DNS:localhost
# writes DIR/ca.pem (what clients trust), DIR/server.pem and DIR/server.key (what the
# gateway serves). Keys are ECDSA P-256, mode 0600, made here and never committed.
# Idempotent: an existing CA and certificate are kept (delete DIR to make new ones).
set -euo pipefail
dir=$1
shift
[[ $# -gt 0 ]] || { echo "usage: $0 DIR SAN... (e.g. IP:127.0.0.1 DNS:localhost)" >&2; exit 2; }
mkdir -p "$dir"
chmod 0700 "$dir"
umask 077
if [[ -s $dir/ca.pem && -s $dir/server.pem && -s $dir/server.key ]]; then
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj "/CN=citadel-llm lab CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=citadel-gateway" 2>/dev/null
san=$(IFS=,; echo "$*")
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 825 -out "$dir/server.pem" -extfile "$dir/server.ext" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 0644 "$dir/ca.pem" "$dir/server.pem"
