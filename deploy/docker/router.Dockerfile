# Builds the router into a small runtime image:
#   docker build -f deploy/docker/router.Dockerfile -t router .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p router

FROM debian:bookworm-slim
COPY --from=build /src/target/release/router /usr/local/bin/router
COPY models-config/examples/routing-only.json /etc/lightbulb/rules.json
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/router"]
CMD ["--config", "/etc/lightbulb/rules.json", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:9901"]
