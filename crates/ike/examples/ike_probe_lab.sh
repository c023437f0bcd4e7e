#!/bin/sh
# Interop check of the IKE engine against strongSwan 5.9.8 (charon + kernel-libipsec) in a
# namespace pair: ikeprobe-a (ike_probe, 198.51.100.1) <-veth-> ikeprobe-b (charon, 198.51.100.2).
#
#   ike_probe_lab.sh <probe-suite> <ike-proposal> <esp-proposal> <probe|swan|both> [seconds] [extra probe args...]
#   e.g. ike_probe_lab.sh gcm aes256gcm16-prfsha256-x25519 aes256gcm16 probe 15
#
# Needs root and the release/debug build of the example (CARGO_TARGET_DIR/debug/examples/ike_probe).
set -u
SUITE=$1 PROP=$2 ESP=$3 WHO=$4 SECS=${5:-15}
shift 5 2>/dev/null || shift $#
EXTRA="$*"
BIN=${PROBE_BIN:-${CARGO_TARGET_DIR:-target}/debug/examples/ike_probe}
DIR=$(mktemp -d /tmp/ikeprobe.XXXXXX)
NA=ikeprobe-a NB=ikeprobe-b
CHARON_PID=""

cleanup() {
    [ -n "$CHARON_PID" ] && kill "$CHARON_PID" 2>/dev/null && sleep 0.5
    ip netns del $NA 2>/dev/null
    ip netns del $NB 2>/dev/null
}
trap cleanup EXIT INT TERM

ip netns add $NA && ip netns add $NB || exit 1
ip link add ikeprobe-va netns $NA type veth peer name ikeprobe-vb netns $NB
ip -n $NA addr add 198.51.100.1/24 dev ikeprobe-va
ip -n $NB addr add 198.51.100.2/24 dev ikeprobe-vb
ip -n $NA link set ikeprobe-va up; ip -n $NA link set lo up
ip -n $NB link set ikeprobe-vb up; ip -n $NB link set lo up
# charon (install_routes) needs an address inside its protected network.
ip -n $NB link add ikeprobe-in type veth peer name ikeprobe-in2 && ip -n $NB addr add 10.2.0.1/24 dev ikeprobe-in && ip -n $NB link set ikeprobe-in up && ip -n $NB link set ikeprobe-in2 up

case "$WHO" in
    swan) START=start; PROBE_ROLE=--responder ;;
    both) START=start; PROBE_ROLE= ;;   # both initiate at once
    *) START=none; PROBE_ROLE= ;;
esac
mkdir -p $DIR/run
# CERTS=ecdsa|rsa: certificate authentication both ways with a throw-away CA (IP subjectAltNames).
AUTH_LOCAL="auth = psk"; AUTH_REMOTE="auth = psk"; CERT_ARGS=""
if [ -n "${CERTS:-}" ]; then
    mkdir -p $DIR/x509 $DIR/x509ca $DIR/ecdsa $DIR/rsa $DIR/pki
    if [ "$CERTS" = rsa ]; then KEYGEN="openssl genrsa -traditional 2048"; KDIR=rsa; else KEYGEN="openssl ecparam -name prime256v1 -genkey -noout"; KDIR=ecdsa; fi
    $KEYGEN > $DIR/pki/ca.key 2>/dev/null
    openssl req -x509 -new -key $DIR/pki/ca.key -subj "/CN=ikeprobe CA" -days 2 -out $DIR/x509ca/ca.pem 2>/dev/null
    for who in a:198.51.100.1 b:198.51.100.2; do
        n=${who%%:*}; ip=${who#*:}
        $KEYGEN > $DIR/pki/$n.key 2>/dev/null
        openssl req -new -key $DIR/pki/$n.key -subj "/CN=gw $ip" -out $DIR/pki/$n.csr 2>/dev/null
        printf "subjectAltName=IP:$ip\n" > $DIR/pki/$n.ext
        openssl x509 -req -in $DIR/pki/$n.csr -CA $DIR/x509ca/ca.pem -CAkey $DIR/pki/ca.key -CAcreateserial -days 1 -extfile $DIR/pki/$n.ext -out $DIR/pki/$n.pem 2>/dev/null
    done
    cp $DIR/pki/b.pem $DIR/x509/b.pem; cp $DIR/pki/b.key $DIR/$KDIR/b.key
    AUTH_LOCAL="auth = pubkey
             certs = b.pem"; AUTH_REMOTE="auth = pubkey"
    CERT_ARGS="--cert $DIR/pki/a.pem --key $DIR/pki/a.key --ca $DIR/x509ca/ca.pem"
fi
cat > $DIR/strongswan.conf <<EOF
charon {
  load_modular = no
  load = random nonce openssl aes gcm sha1 sha2 hmac kdf pem pkcs1 x509 curve25519 kernel-libipsec kernel-netlink socket-default vici updown
  install_routes = yes
  ${SWAN_CHARON_EXTRA:-}
  filelog { lab { path = $DIR/charon.log
                  time_format = %H:%M:%S
                  ike_name = yes
                  flush_line = yes
                  default = 1
                  ike = 2
                  enc = 1 } }
  plugins { vici { socket = unix://$DIR/charon.vici } }
}
EOF
cat > $DIR/swanctl.conf <<EOF
connections {
  l2l {
    version = 2
    local_addrs = 198.51.100.2
    remote_addrs = 198.51.100.1
    proposals = $PROP
    dpd_delay = 5s
    ${SWAN_REKEY:-}
    local  { $AUTH_LOCAL
             id = 198.51.100.2 }
    remote { $AUTH_REMOTE
             id = 198.51.100.1 }
    children {
      net-net {
        local_ts  = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = $ESP
        start_action = $START
        dpd_action = restart
        ${SWAN_CHILD_REKEY:-}
      }
    }
  }
}
secrets { ike-l2l { id-a = 198.51.100.1
                    id-b = 198.51.100.2
                    secret = "probe-lab-only-psk" } }
EOF
ip netns exec $NB unshare -m --propagation private sh -c \
  "mount --bind $DIR/run /run && STRONGSWAN_CONF=$DIR/strongswan.conf exec /usr/lib/ipsec/charon" >/dev/null 2>&1 &
CHARON_PID=$!
for i in $(seq 50); do [ -S $DIR/charon.vici ] && break; sleep 0.1; done
load() { swanctl --load-all --file $DIR/swanctl.conf --uri unix://$DIR/charon.vici >/dev/null 2>&1 || { echo "swanctl load failed"; exit 1; }; }
# In 'both' mode the probe is up first so that the two initiations can cross.
[ "$WHO" = both ] || load
ip netns exec $NA "$BIN" --local 198.51.100.1 --peer 198.51.100.2 --suite "$SUITE" --seconds "$SECS" $PROBE_ROLE $CERT_ARGS $EXTRA > $DIR/probe.out 2>&1 &
PROBE_PID=$!
[ "$WHO" = both ] && load
if [ -n "${RESTART_AT:-}" ]; then
    # Peer restart: SIGKILL charon, start a fresh one (start_action decides who initiates).
    sleep $RESTART_AT
    echo "=== killing charon (pid $CHARON_PID) at t=${RESTART_AT}s and restarting it"
    kill -9 $CHARON_PID; wait $CHARON_PID 2>/dev/null
    rm -f $DIR/charon.vici $DIR/run/charon.pid
    ip netns exec $NB unshare -m --propagation private sh -c \
      "mount --bind $DIR/run /run && STRONGSWAN_CONF=$DIR/strongswan.conf exec /usr/lib/ipsec/charon" >/dev/null 2>&1 &
    CHARON_PID=$!
    for i in $(seq 50); do [ -S $DIR/charon.vici ] && break; sleep 0.1; done
    swanctl --load-all --file $DIR/swanctl.conf --uri unix://$DIR/charon.vici >/dev/null 2>&1
    sleep $((SECS - 2 - RESTART_AT))
else
    sleep $((SECS - 2))
fi
echo "=== swanctl --list-sas (t=$((SECS - 2))s)"
swanctl --list-sas --uri unix://$DIR/charon.vici
wait $PROBE_PID
echo "=== probe output"
cat $DIR/probe.out
echo "=== charon log (errors/notable)"
grep -E "error|failed|invalid|received|establish|INSTALLED|rekey|delet|no proposal|not acceptable|NO_PROP|AUTH" $DIR/charon.log | tail -60
echo "(full log: $DIR/charon.log)"
