#!/usr/bin/env sh
# A self-signed development certificate for the gateway (never for production).
set -eu
dir="$(dirname "$0")/certs"
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/dev.key" -out "$dir/dev.crt" 2>/dev/null
echo "wrote $dir/dev.crt and $dir/dev.key"
