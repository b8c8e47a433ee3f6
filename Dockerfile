# The same image `kiln pack` builds, for people who prefer `docker build`:
#   docker build -t ollama-gemma:4b --build-arg MODEL=gemma3:4b \
#       --build-arg PLUGINS="api_key" --build-arg PROXY_CONFIG=kiln-proxy.toml .
# PROXY_CONFIG is a kiln-proxy TOML in the build context that configures the
# plugins (see README); the default configures none.
# kiln pack needs no Docker daemon and re-uploads nothing unchanged; this file
# exists so both routes give the same runtime layout and config
# (packager/tests/dockerfile.rs compares them).

ARG OLLAMA_BASE=ollama/ollama:latest

# --- build kiln, kiln-proxy and the wasm plugins ---------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-unknown-unknown \
 && cargo build --release --locked -p kiln -p kiln-proxy \
 && scripts/build-plugins

# --- pull the model straight from the Ollama registry (no `ollama serve & sleep`) ---
FROM build AS models
ARG MODEL=gemma3:4b
RUN target/release/kiln pull $MODEL --models-dir /models

# --- pick the plugin set -----------------------------------------------------
FROM build AS plugins
ARG PLUGINS="api_key"
RUN mkdir -p /out/plugins \
 && for p in $PLUGINS; do cp "target/plugins/$p.wasm" /out/plugins/ || exit 1; done

# --- the runtime image -------------------------------------------------------
FROM ${OLLAMA_BASE}
ARG MODEL=gemma3:4b
ARG PROXY_CONFIG=deploy/kiln-proxy.toml
COPY --from=models /models /models
COPY --from=build /src/target/release/kiln-proxy /usr/local/bin/kiln-proxy
COPY --from=plugins /out/plugins /plugins
COPY ${PROXY_CONFIG} /etc/kiln/proxy.toml
# OLLAMA_MODELS explicitly: a HOME change on Cloud Run once hid baked models.
# Ollama listens on loopback only; kiln-proxy is the way in.
ENV OLLAMA_MODELS=/models \
    OLLAMA_HOST=127.0.0.1:11434 \
    OLLAMA_KEEP_ALIVE=-1 \
    OLLAMA_NOPRUNE=1 \
    OLLAMA_NO_CLOUD=1 \
    KILN_CONFIG=/etc/kiln/proxy.toml \
    KILN_OLLAMA_PRELOAD=${MODEL}
EXPOSE 8080
# kiln-proxy supervises `ollama serve` (the base image's /bin/ollama) in this container.
ENTRYPOINT ["/usr/local/bin/kiln-proxy", "--spawn-ollama", "--ollama-command", "/bin/ollama"]
CMD []
