// Command etcd is upstream's etcd server, built from the Go module proxy so
// envtest needs no binary download.
// hack/build-envtest.sh builds it into bin/k8s/.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
