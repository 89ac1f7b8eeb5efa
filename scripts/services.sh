# Sourced by scripts/test and scripts/dev-stack: finds, installs and starts the services the
# product needs on this machine. Every function records what it started in STARTED_PIDS /
# STARTED_RABBITMQ so the caller stops exactly that, and nothing else.

SECANTUS_VERSION=0.7.0b3
LOCAL_DIR="${LOCAL_DIR:-$PWD/.local}"
STARTED_PIDS=()
STARTED_DIRS=()
STARTED_RABBITMQ=

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to $3 seconds for host $1 port $2 to accept connections.
wait_for_port() {
    local deadline=$((SECONDS + $3))
    until port_open "$1" "$2"; do
        [ "$SECONDS" -lt "$deadline" ] || { log "nothing listens on $1:$2 after $3 s"; return 1; }
        sleep 0.2
    done
}

# RabbitMQ on 127.0.0.1:5672, unless AMQP_URL names another broker.
ensure_rabbitmq() {
    if [ -n "${AMQP_URL:-}" ]; then
        log "using the broker at AMQP_URL"
        return
    fi
    if port_open 127.0.0.1 5672; then
        log "RabbitMQ is running on 127.0.0.1:5672"
        return
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        log "installing RabbitMQ (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    log "starting RabbitMQ"
    rabbitmq-server -detached
    STARTED_RABBITMQ=1
    wait_for_port 127.0.0.1 5672 120
    rabbitmqctl await_startup >/dev/null
}

# promtool (Debian's prometheus package), for the alert rules' tests and the scraping test.
ensure_promtool() {
    if ! command -v promtool >/dev/null; then
        log "installing Prometheus (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
    fi
}

# cargo-deny, for the supply-chain checks (deny.toml).
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
    if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
        log "installing cargo-deny $CARGO_DENY_VERSION (cargo install)"
        cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
    fi
}

# A venv $1 under .local holding Python package $2 at version $3; prints the path of its
# command $4.
python_tool() {
    local venv="$LOCAL_DIR/$1" package=$2 version=$3
    if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('$package') == '$version'" 2>/dev/null; then
        log "installing $package $version into $venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version" >&2
    fi
    echo "$venv/bin/$4"
}

# SecantusDB (a MongoDB-compatible server); prints secantusd-py's path.
secantus_binary() { python_tool secantus-venv SecantusDB "$SECANTUS_VERSION" secantusd-py; }

# schemathesis, the HTTP fuzzer tests/tests/openapi.rs runs against /openapi.json; exports
# SCHEMATHESIS (unless already set) as the test expects.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
    if [ -z "${SCHEMATHESIS:-}" ]; then
        SCHEMATHESIS=$(python_tool schemathesis-venv schemathesis "$SCHEMATHESIS_VERSION" schemathesis)
        export SCHEMATHESIS
    fi
}

# standardwebhooks, the Standard Webhooks reference library tests/tests/webhooks.rs checks the
# signatures of deliveries with (an implementation other than ours); exports
# STANDARDWEBHOOKS_PYTHON (unless already set), a Python that imports it.
STANDARDWEBHOOKS_VERSION=1.1.0
ensure_standardwebhooks() {
    if [ -z "${STANDARDWEBHOOKS_PYTHON:-}" ]; then
        STANDARDWEBHOOKS_PYTHON=$(python_tool standardwebhooks-venv standardwebhooks "$STANDARDWEBHOOKS_VERSION" python)
        export STANDARDWEBHOOKS_PYTHON
    fi
}

# Starts SecantusDB on 127.0.0.1:$1 with storage $2 (a folder, or :memory:) and exports
# MONGODB_URI. Does nothing when MONGODB_URI is already set.
ensure_mongodb() {
    if [ -n "${MONGODB_URI:-}" ]; then
        log "using the database at MONGODB_URI"
        return
    fi
    local port=$1 storage=$2 server
    if port_open 127.0.0.1 "$port"; then
        log "127.0.0.1:$port is taken: set MONGODB_URI to use that server, or pick another port"
        return 1
    fi
    server=$(secantus_binary)
    mkdir -p "$LOCAL_DIR/logs"
    [ "$storage" = ":memory:" ] || mkdir -p "$storage"
    local logfile="$LOCAL_DIR/logs/secantus-$port.log"
    log "starting SecantusDB on 127.0.0.1:$port (storage $storage)"
    "$server" --host 127.0.0.1 --port "$port" --storage-path "$storage" --log-level WARNING >"$logfile" 2>&1 &
    STARTED_PIDS+=($!)
    wait_for_port 127.0.0.1 "$port" 60 || { cat "$logfile" >&2; return 1; }
    export MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
}

# Starts secantusd-rs (the Rust SecantusDB, what benchmarks run on) on 127.0.0.1:$1 with a
# fresh storage folder, and exports MONGODB_URI. Does nothing when MONGODB_URI is already set.
ensure_mongodb_rs() {
    if [ -n "${MONGODB_URI:-}" ]; then
        log "using the database at MONGODB_URI"
        return
    fi
    local port=$1 storage="$LOCAL_DIR/secantus-rs-$1"
    rm -rf "$storage" && mkdir -p "$storage" "$LOCAL_DIR/logs"
    local logfile="$LOCAL_DIR/logs/secantus-rs-$port.log"
    log "starting secantusd-rs on 127.0.0.1:$port (storage $storage)"
    secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$storage" --cache-size 256M >"$logfile" 2>&1 &
    STARTED_PIDS+=($!)
    STARTED_DIRS+=("$storage")
    wait_for_port 127.0.0.1 "$port" 60 || { cat "$logfile" >&2; return 1; }
    export MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
}

# Stops the processes this script started (SecantusDB among them), and forgets MONGODB_URI.
stop_started_processes() {
    if [ "${#STARTED_PIDS[@]}" -gt 0 ]; then
        kill "${STARTED_PIDS[@]}" 2>/dev/null || true
        wait "${STARTED_PIDS[@]}" 2>/dev/null || true
    fi
    STARTED_PIDS=()
    if [ "${#STARTED_DIRS[@]}" -gt 0 ]; then
        rm -rf "${STARTED_DIRS[@]}"
    fi
    STARTED_DIRS=()
    unset MONGODB_URI
}

# Stops what this script started.
stop_started() {
    stop_started_processes
    if [ -n "$STARTED_RABBITMQ" ]; then
        log "stopping the RabbitMQ this script started"
        rabbitmqctl stop >/dev/null 2>&1 || true
    fi
}
