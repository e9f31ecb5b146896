package integration

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/internal/loopback"
)

// TestOperatorProcess runs `mailfleet operator` as a cluster would: it takes
// the leader Lease, serves its probes, reconciles, and exits cleanly on
// SIGTERM, releasing the Lease.
func TestOperatorProcess(t *testing.T) {
	ns := env.Namespace(t, nil)
	dir := t.TempDir()
	kubeconfig := writeKubeconfig(t, dir, envtestkit.Identity{})
	probes := loopback.FreeAddr(t)
	cmd := exec.Command(mailfleetBinary(t), "operator",
		"--leader-elect", "--leader-election-namespace", ns, "--domain-key-namespace", ns,
		"--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", probes,
		"--relay-image", "mailfleet:test")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	_, exited := startLogged(t, cmd, "operator")
	var lease coordinationv1.Lease
	envtestkit.Eventually(t, relayWait, func() error { return env.Get(&lease, ns, "mailfleet-operator.mailfleet.io") })
	envtestkit.Eventually(t, relayWait, func() error { return httpOK("http://" + probes + "/readyz") })
	// It reconciles: an account in its namespace gets a status.
	env.CreateAccount(t, ns, "probe", ns, "absent")
	envtestkit.Eventually(t, relayWait, func() error {
		var a v1.SmtpAccount
		if err := env.Get(&a, ns, "probe"); err != nil {
			return err
		}
		if len(a.Status.Conditions) == 0 {
			return fmt.Errorf("no status yet")
		}
		return nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if !cmd.ProcessState.Success() {
			t.Fatalf("operator exit: %v", cmd.ProcessState)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("operator did not exit within 30 s of SIGTERM")
	}
	if err := env.Get(&lease, ns, "mailfleet-operator.mailfleet.io"); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Fatalf("lease still held by %q after shutdown", *lease.Spec.HolderIdentity)
	}
}
