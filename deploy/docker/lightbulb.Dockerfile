# Builds Lightbulb into a small runtime image:
#   docker build -f deploy/docker/lightbulb.Dockerfile -t lightbulb .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc: etcd-client's build script (the etcd store).
RUN apt-get update && apt-get install -y protobuf-compiler && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p lightbulb

FROM debian:bookworm-slim
COPY --from=build /src/target/release/lightbulb /usr/local/bin/lightbulb
COPY models-config/examples/minimal.json /etc/lightbulb/rules.json
USER 65532:65532
EXPOSE 50051 8081
ENTRYPOINT ["/usr/local/bin/lightbulb"]
CMD ["--config", "/etc/lightbulb/rules.json", "--grpc", "0.0.0.0:50051", "--http", "0.0.0.0:8081"]
