// Command coredns is CoreDNS with only the plugins the single-node test
// cluster's Corefile uses (hack/cluster/manifests/coredns.yaml). Leaving out
// forward (and every other plugin that talks to the outside) means the
// cluster's DNS cannot send a query off the machine whatever its Corefile says,
// and the binary builds in a fraction of the time of the full set.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins, registered by their init functions. Their order in the
	// Corefile's chain comes from CoreDNS's own directive list, not from here.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
