# syntax=docker/dockerfile:1
# The one mailfleet image: `mailfleet operator`, `relay`, `ratelimit`, `dev`
# and `version` are subcommands of one static binary.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t mailfleet .
#   (without a Docker engine: make image, which assembles the same content
#   with hack/image; test/install/image_test.go checks the two agree)
#
# The build flags are the Makefile's `build` target's; test/install builds the
# binary with the go build command below, exactly as written, and checks it
# is static and reports VERSION.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
ARG VERSION=dev
# CGO off: a static binary that runs on distroless/static (no libc).
# -trimpath: no build machine paths in the binary. -s -w: no symbol table or
# DWARF. main.version is what `mailfleet version` prints.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mailfleet ./cmd/mailfleet

# distroless/static: CA certificates, /etc/passwd with the nonroot user
# (65532), tzdata; no shell, no package manager.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/mailfleet /usr/local/bin/mailfleet
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mailfleet"]
