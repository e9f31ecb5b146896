# Targets for the single-node cluster (hack/cluster). The Makefile includes
# this file. All of them need root (they run containerd and a kubelet).

.PHONY: cluster-build cluster-up cluster-down cluster-purge

## cluster-build: every binary of the single-node cluster, built from source
## into bin/cluster/bin (cached; about 10-15 minutes the first time).
cluster-build:
	@hack/cluster/build.sh

## cluster-up: a real single-node Kubernetes cluster on this machine
## (kubeconfig bin/cluster/kubeconfig; `source bin/cluster/env`).
cluster-up:
	@hack/cluster/up.sh

## cluster-down: stop it and remove everything it put on the machine; binaries
## and imported images stay cached.
cluster-down:
	@hack/cluster/down.sh

## cluster-purge: cluster-down, and drop images, certificates and logs too.
cluster-purge:
	@hack/cluster/down.sh --purge

## cluster-smoke: check the running cluster (pods under the restricted Pod
## Security Standard, Services, DNS, logs/exec, volumes, containment).
.PHONY: cluster-smoke
cluster-smoke:
	@hack/cluster/smoke.sh
