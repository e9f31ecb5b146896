# Targets for images built without Docker (hack/image): no Docker engine and
# no registry here, so the images are assembled from local builds and Debian
# files by hack/image/images.sh. The Makefile includes this file.
IMAGES_SCRIPT := hack/image/images.sh

.PHONY: images images-load

## image: the mailfleet image (linux/amd64 and linux/arm64, the Dockerfile's
## content) as bin/images/mailfleet.tar; `make image-docker` builds the
## Dockerfile itself where a Docker engine exists.
image:
	VERSION=$(VERSION) $(IMAGES_SCRIPT) build mailfleet

## images: every image the single-node cluster runs (mailfleet, nats, redis,
## smtpsink, pause, coredns) into bin/images/.
images:
	VERSION=$(VERSION) $(IMAGES_SCRIPT) build

## images-load: import bin/images/*.tar into the cluster's containerd
## (CONTAINERD_ADDRESS overrides its socket); images already there at the
## same digest are skipped.
images-load: images
	$(IMAGES_SCRIPT) load
