#!/usr/bin/env bash
# The peer brokers for `keel-bench peers` and `keel-bench suite`, on loopback, with their data
# on the filesystem being measured.
#
#   bench/peers/setup.sh start DIR   install (Debian packages) if missing, then start RabbitMQ
#                                    (AMQP on 127.0.0.1:5672) and NATS with JetStream
#                                    (127.0.0.1:4222), their data under DIR/keel-peers
#   bench/peers/setup.sh stop DIR    stop both and remove DIR/keel-peers
#   bench/peers/setup.sh status      say which peers answer
#
# A peer that cannot be installed or started is reported and skipped; the benchmark then says
# "not measured" for it instead of failing. Needs root (apt-get, and RabbitMQ runs as the
# rabbitmq user the package creates).
set -uo pipefail

RABBIT_PORT=5672
NATS_PORT=4222

say() { echo "peers: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # PORT SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

install_missing() {
    local missing=()
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v nats-server >/dev/null || missing+=(nats-server)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} from Debian's packages"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; then
        say "apt-get install ${missing[*]} failed; trying once more after apt-get update"
        apt-get update -q >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
            say "could not install ${missing[*]}: those peers will be reported as not measured"
    fi
}

rabbit_env() { # DIR
    export RABBITMQ_MNESIA_BASE="$1/rabbitmq/mnesia"
    export RABBITMQ_LOG_BASE="$1/rabbitmq/log"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$RABBIT_PORT
    export RABBITMQ_NODENAME=keel-bench@localhost
    # epmd and the Erlang distribution listener (how rabbitmqctl reaches the node) stay on
    # loopback too: nothing of a benchmark listens beyond it.
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbit() { # DIR
    command -v rabbitmq-server >/dev/null || { say "RabbitMQ: not installed"; return 1; }
    if port_open $RABBIT_PORT; then
        say "RabbitMQ: something already listens on 127.0.0.1:$RABBIT_PORT; using it"
        return 0
    fi
    rabbit_env "$1"
    mkdir -p "$1/rabbitmq/mnesia" "$1/rabbitmq/log"
    chown -R rabbitmq: "$1/rabbitmq" 2>/dev/null || true
    # The Debian wrapper drops to the rabbitmq user; the RABBITMQ_* settings pass through su.
    rabbitmq-server >"$1/rabbitmq/log/console.log" 2>&1 &
    # The AMQP listener opens last, once the node has booted.
    if ! wait_port $RABBIT_PORT 120; then
        say "RabbitMQ: did not start within two minutes (log: $1/rabbitmq/log)"
        return 1
    fi
    say "RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null) on 127.0.0.1:$RABBIT_PORT"
}

start_nats() { # DIR
    command -v nats-server >/dev/null || { say "NATS: not installed"; return 1; }
    if port_open $NATS_PORT; then
        say "NATS: something already listens on 127.0.0.1:$NATS_PORT; using it"
        return 0
    fi
    mkdir -p "$1/nats"
    nats-server -js -sd "$1/nats" -a 127.0.0.1 -p $NATS_PORT -P "$1/nats/nats.pid" \
        >"$1/nats/nats.log" 2>&1 &
    if ! wait_port $NATS_PORT 30; then
        say "NATS: did not start within 30 s (log: $1/nats/nats.log)"
        return 1
    fi
    say "NATS $(nats-server --version 2>/dev/null) with JetStream on 127.0.0.1:$NATS_PORT"
}

stop_all() { # DIR
    if [ -d "$1/rabbitmq" ]; then
        rabbit_env "$1"
        timeout 60 rabbitmqctl -n keel-bench@localhost stop >/dev/null 2>&1 ||
            say "RabbitMQ: rabbitmqctl stop failed"
        # Erlang's port mapper outlives the node; stop it too unless another node uses it.
        if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q '^name '; then
            epmd -kill >/dev/null 2>&1
        fi
    fi
    if [ -f "$1/nats/nats.pid" ]; then
        kill "$(cat "$1/nats/nats.pid")" 2>/dev/null
        for _ in $(seq 100); do port_open $NATS_PORT || break; sleep 0.1; done
    fi
    rm -rf "$1"
}

cmd=${1:-}
case "$cmd" in
start)
    [ $# -eq 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }
    base="$(realpath "$2")/keel-peers"
    install_missing
    ok=0
    start_rabbit "$base" && ok=$((ok + 1))
    start_nats "$base" && ok=$((ok + 1))
    say "$ok of 2 peers running"
    ;;
stop)
    [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    stop_all "$(realpath "$2")/keel-peers"
    ;;
status)
    port_open $RABBIT_PORT && say "RabbitMQ answers on 127.0.0.1:$RABBIT_PORT" || say "RabbitMQ: not running"
    port_open $NATS_PORT && say "NATS answers on 127.0.0.1:$NATS_PORT" || say "NATS: not running"
    ;;
*)
    sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
