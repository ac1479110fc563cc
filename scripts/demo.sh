#!/usr/bin/env bash
# make demo: start the bundled KMS emulator on loopback, init a volume against
# a KMS alias, mount it, write a file and show it and its ciphertext. Leaves
# everything running; `make demo-stop` (scripts/demo.sh stop) tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
DEMO=$PWD/out/demo
KEY_ID=6b6d7366-dead-4000-8000-00000000de30
REGION=eu-west-2
ACCOUNT=111122223333

stop() {
	if [ -d "$DEMO/mnt" ] && mountpoint -q "$DEMO/mnt"; then
		"$BIN/kmsfs" unmount "$DEMO/mnt" || fusermount3 -u "$DEMO/mnt" || true
	fi
	if [ -f "$DEMO/local-kms.pid" ]; then
		kill "$(cat "$DEMO/local-kms.pid")" 2>/dev/null || true
	fi
	rm -rf "$DEMO"
}

if [ "${1:-}" = stop ]; then
	stop
	echo "demo stopped"
	exit 0
fi
stop
mkdir -p "$DEMO/kms-data" "$DEMO/mnt"

# A symmetric CMK and alias/kmsfs-demo for local-kms.
backing=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$DEMO/seed.yaml" <<YAML
Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: $KEY_ID
          Description: kmsfs demo key
        BackingKeys:
          - $backing
Aliases:
  - AliasName: alias/kmsfs-demo
    TargetKeyId: $KEY_ID
YAML

# local-kms listens on every interface whatever it is told; we only ever
# talk to it on 127.0.0.1. PORT=0 lets it pick a free port, which it logs.
PORT=0 KMS_REGION=$REGION KMS_ACCOUNT_ID=$ACCOUNT KMS_SEED_PATH="$DEMO/seed.yaml" \
	KMS_DATA_PATH="$DEMO/kms-data" setsid "$BIN/local-kms" > "$DEMO/local-kms.log" 2>&1 &
echo $! > "$DEMO/local-kms.pid"
port=""
for _ in $(seq 100); do # at most ~10 s
	port=$(sed -n 's/.*started on [^ :]*:\([0-9][0-9]*\).*/\1/p' "$DEMO/local-kms.log" | head -1)
	[ -n "$port" ] && break
	sleep 0.1
done
if [ -z "$port" ]; then
	echo "local-kms did not start:"; cat "$DEMO/local-kms.log"; exit 1
fi

export AWS_ENDPOINT_URL_KMS=http://127.0.0.1:$port AWS_REGION=$REGION
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true
# init approves the volume in a trust dir on the host (kmsfs trust); the
# demo keeps its own inside $DEMO, so make demo-stop removes it too.
export KMSFS_TRUST_DIR=$DEMO/trust
cat > "$DEMO/env" <<ENV
export AWS_ENDPOINT_URL_KMS=$AWS_ENDPOINT_URL_KMS AWS_REGION=$REGION
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true
export KMSFS_TRUST_DIR=$KMSFS_TRUST_DIR
ENV

echo "== local-kms on 127.0.0.1:$port with alias/kmsfs-demo"
echo "== kmsfs init --key awskms:alias/kmsfs-demo $DEMO/cipher"
"$BIN/kmsfs" init --key awskms:alias/kmsfs-demo "$DEMO/cipher"
echo "== kmsfs mount $DEMO/cipher $DEMO/mnt"
"$BIN/kmsfs" mount --log-file "$DEMO/kmsfs.log" "$DEMO/cipher" "$DEMO/mnt"

echo "Hello from kmsfs: this line is stored encrypted." > "$DEMO/mnt/hello.txt"
echo
echo "== through the mount: cat $DEMO/mnt/hello.txt"
cat "$DEMO/mnt/hello.txt"
echo
echo "== in the cipher dir: $DEMO/cipher (names encrypted; kmsfs.names holds the wrapped name key)"
ls -l "$DEMO/cipher"
echo
echo "== kmsfs info $DEMO/mnt/hello.txt (finds its cipher file; reads the header, no key needed)"
"$BIN/kmsfs" info "$DEMO/mnt/hello.txt"
cipherfile=$("$BIN/kmsfs" info --json "$DEMO/mnt/hello.txt" | sed -n 's/.*"cipher_path": *"\([^"]*\)".*/\1/p')
echo
echo "== hexdump of $cipherfile (header with the KMS-wrapped data key, then one AES-GCM block)"
slot=$(sed -n 's/.*"header_slot_size": *\([0-9]*\).*/\1/p' "$DEMO/cipher/kmsfs.conf")
od -A x -t x1z -v "$cipherfile" | sed -n "1,6p;/^$(printf '%06x' $((2 * slot)))/,\$p" | head -14
echo
echo "The volume stays mounted at $DEMO/mnt (emulator settings in $DEMO/env)."
echo "Stop it with: make demo-stop"
