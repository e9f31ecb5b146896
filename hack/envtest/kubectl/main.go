// Command kubectl is upstream's cmd/kubectl, built from the Go module proxy for
// tests that need it (e.g. server-side dry-run apply against envtest).
// hack/build-envtest.sh builds it into bin/k8s/.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Import to initialize client auth plugins.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// As upstream: apply -v early so klog works while the command (plugins,
	// .kuberc) is being constructed, before cli.RunNoErrOutput parses flags.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		// Pretty-print the error and exit with an error.
		util.CheckErr(err)
	}
}
