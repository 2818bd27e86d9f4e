# clusterd as a container entrypoint.
#
#   docker build -t clusterd .
#   docker run --rm -p 3000:3000 clusterd      # the bundled chat example, one worker per CPU
#   open http://127.0.0.1:3000/                # the page says which worker serves it
#
# Build your own image FROM this one (or copy /usr/local/bin/clusterd out of it), add your worker
# program, and give it after `--`:
#
#   FROM clusterd
#   COPY my-server /app/my-server
#   CMD ["--workers", "auto", "--listen", "0.0.0.0:3000", "--", "/app/my-server"]
#
# The runtime image is distroless (glibc, libgcc, CA certificates, /tmp; no shell, no package
# manager): about 36 MB, the binaries stripped. A worker that needs a runtime (Node.js, Python)
# goes the other way: copy clusterd into that runtime's image,
#
#   COPY --from=clusterd /usr/local/bin/clusterd /usr/local/bin/clusterd
#   ENTRYPOINT ["clusterd"]
#   CMD ["--protocol", "node", "--listen", "0.0.0.0:3000", "--", "node", "/app/worker.js"]
#
# `docker stop` waits 10s by default, less than clusterd's 30s drain time (--grace): give it
# longer, `docker stop -t 40` (compose: `stop_grace_period: 40s`), or set CLUSTERD_GRACE lower.

# ---- build ------------------------------------------------------------------------------------
# The workspace needs rustc >= 1.94 (rust-version in Cargo.toml).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Stripped release binaries (4 MB each instead of 30: the repository's release profile keeps line
# tables for profiling). Set before the first build, so both builds share the dependencies' layer.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_DEBUG=false

# Manifests first, with stub sources, so that the dependencies are compiled in a layer that is
# rebuilt only when Cargo.toml or Cargo.lock change. Every target that Cargo.toml declares gets a
# stub, so that the manifests load; the `chat` stub pulls in the example's dependencies (axum,
# socketioxide).
COPY Cargo.toml Cargo.lock ./
COPY worker-sdk/Cargo.toml worker-sdk/
RUN mkdir -p src worker-sdk/src tests/support benches examples \
 && for target in src/main.rs tests/support/test_worker.rs examples/chat.rs \
        $(grep -o 'benches/[A-Za-z0-9_]*\.rs' Cargo.toml); do echo 'fn main() {}' > "$target"; done \
 && touch worker-sdk/src/lib.rs \
 && cargo build --release --locked --bin clusterd --example chat \
 && rm -rf src worker-sdk/src tests benches examples

# Then the sources. COPY keeps their modification times, which can be older than the stubs' build:
# touch the crate roots so that Cargo rebuilds the workspace's crates and the example.
COPY . .
RUN touch src/main.rs worker-sdk/src/lib.rs examples/*.rs \
 && cargo build --release --locked --bin clusterd --example chat --example hello

# ---- run --------------------------------------------------------------------------------------
# The binaries need glibc and libgcc_s, nothing else (ldd); the builder is Debian 12 too, so the
# glibc versions match. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/clusterd /usr/local/bin/clusterd
# The example SDK workers (examples/chat.rs for the default command below, examples/hello.rs).
COPY --from=builder /src/target/release/examples/chat /usr/local/bin/chat
COPY --from=builder /src/target/release/examples/hello /usr/local/bin/hello

# The control socket (mode 0600) at a fixed, writable path, the same for the running clusterd and
# for `docker exec <container> clusterd status`, whatever the user (the computed default is
# /run/clusterd for root and $XDG_RUNTIME_DIR or $TMPDIR otherwise). With --read-only, mount a tmpfs
# on /tmp.
ENV CLUSTERD_CONTROL=/tmp/clusterd.sock

USER 65532:65532

# No tini or dumb-init: as PID 1, clusterd handles TERM and INT (graceful drain; a second one stops
# at once) and QUIT (immediate stop) itself, passes the stop on to each worker's process group, and
# reaps every orphan that is reparented to it (it is a child subreaper, so it does so when it is not
# PID 1 too). It exits 0 after a graceful stop, 128+N after an immediate stop by signal N, 1 on a
# fatal error, 2 on bad usage.
STOPSIGNAL SIGTERM
ENTRYPOINT ["clusterd"]
# A demo: clusterd listens on 0.0.0.0:3000 and hands each connection to a chat worker. Replace it
# with your own program in a derived image or on `docker run`.
EXPOSE 3000
CMD ["--workers", "auto", "--listen", "0.0.0.0:3000", "--", "/usr/local/bin/chat"]
