#!/bin/sh
# Create a RAUC signing PKI: a CA (its certificate is the keyring on the device) and a signing key +
# certificate issued by it (used by post-image.sh to sign bundles).
#
#   make-keys.sh OUTDIR [NAME]
#
# The committed keys in dev/ were made with `make-keys.sh dev "edge-gateway DEVELOPMENT ONLY"`: their private
# keys are public, so anyone can sign a bundle a development image accepts. For production, run this on an
# offline machine (or use an HSM: RAUC_KEY may be a PKCS#11 URI), keep ca.key.pem offline, and build with
#   RAUC_KEYRING=OUTDIR/keyring.pem RAUC_CERT=OUTDIR/signing.cert.pem RAUC_KEY=OUTDIR/signing.key.pem
# (see buildroot/README.md, "Signing keys").
set -eu
out=${1:?usage: make-keys.sh OUTDIR [NAME]}
name=${2:-edge-gateway}
days=${DAYS:-7300}
mkdir -p "$out"
cd "$out"
[ -e ca.key.pem ] && { echo "make-keys.sh: $out/ca.key.pem exists; refusing to overwrite keys" >&2; exit 1; }

cat >openssl.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
O = edge-gateway
[v3_ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
# No extendedKeyUsage: RAUC before 1.9 checks the S/MIME purpose, which codeSigning alone fails.
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF

openssl req -x509 -newkey rsa:4096 -nodes -config openssl.cnf -extensions v3_ca -days "$days" \
	-subj "/O=edge-gateway/CN=$name CA" -keyout ca.key.pem -out ca.cert.pem 2>/dev/null
openssl req -newkey rsa:4096 -nodes -config openssl.cnf -subj "/O=edge-gateway/CN=$name signing" \
	-keyout signing.key.pem -out signing.csr.pem 2>/dev/null
openssl x509 -req -in signing.csr.pem -CA ca.cert.pem -CAkey ca.key.pem -CAcreateserial \
	-extfile openssl.cnf -extensions v3_leaf -days "$days" -out signing.cert.pem 2>/dev/null
cp ca.cert.pem keyring.pem
rm -f signing.csr.pem ca.cert.srl openssl.cnf
chmod 0600 ca.key.pem signing.key.pem
echo "keys in $out: keyring.pem (device), signing.cert.pem + signing.key.pem (post-image.sh), ca.key.pem (keep offline)"
