package install

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
)

// installWait bounds each wait of the install test; waits end as soon as
// their check passes.
const installWait = 60 * time.Second

// TestChartInstall is the install a user does, short of a kubelet: `helm
// install` into the API server (CRDs included), `helm upgrade`, then the
// operator process started from the installed Deployment (its args and
// env; only the listen addresses move to free loopback ports) as the
// chart's ServiceAccount, so the chart's RBAC is what is tested. Then
// config/samples is applied, cert-manager and the Deployment controller are
// played, and every sample SmtpRelay, SmtpAccount and SmtpLabel must come
// Ready. Last, `helm uninstall` must leave the CRDs, and so the samples, in
// place.
func TestChartInstall(t *testing.T) {
	ctx := context.Background()
	ns := env.CreateNamespace(t, "mailfleet", restricted)
	// Every optional part on: the basic Redis and NATS, the monitors and the
	// dashboard are installed for real too (the pods never start: no kubelet).
	notes, err := helm(append([]string{"install", "mailfleet", chartDir, "--namespace", ns}, allOptional...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, notes)
	}
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			helm("uninstall", "mailfleet", "--namespace", ns)
		}
	})
	// An upgrade re-applies the CRDs, as every later release will.
	if out, err := helm("upgrade", "mailfleet", chartDir, "--namespace", ns, "--reuse-values", "--set", "logLevel=debug"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	waitCRDsEstablished(t)

	dep := &appsv1.Deployment{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "mailfleet-operator"}, dep); err != nil {
		t.Fatal(err)
	}
	op := startOperator(t, dep)

	envtestkit.Eventually(t, installWait, func() error {
		lease := &coordinationv1.Lease{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "mailfleet-operator.mailfleet.io"}, lease); err != nil {
			return fmt.Errorf("leader Lease in %s: %w", ns, err)
		}
		if ptr.Deref(lease.Spec.HolderIdentity, "") == "" {
			return fmt.Errorf("leader Lease has no holder")
		}
		return nil
	})

	checkNotes(t, notes)
	t.Run("tenant roles", func(t *testing.T) { checkTenantRoles(t) })
	t.Run("metrics", func(t *testing.T) { checkOperatorMetrics(t, op) })

	samples := env.CreateNamespace(t, "samples", nil)
	applySamplesReady(t, samples)

	// The account's credentials reached its Secret: the operator wrote it
	// with the chart's RBAC.
	creds := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: samples, Name: "shop-smtp-credentials"}, creds); err != nil {
		t.Fatal(err)
	}
	if string(creds.Data["username"]) != "shop" || len(creds.Data["password"]) == 0 {
		t.Errorf("shop-smtp-credentials: username %q, %d password bytes", creds.Data["username"], len(creds.Data["password"]))
	}

	op.stop(t)
	if out, err := helm("uninstall", "mailfleet", "--namespace", ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	uninstalled = true
	waitCRDsEstablished(t) // still there: helm.sh/resource-policy keep
	acc := &unstructured.Unstructured{}
	acc.SetAPIVersion("mailfleet.io/v1alpha1")
	acc.SetKind("SmtpAccount")
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: samples, Name: "shop"}, acc); err != nil {
		t.Errorf("after helm uninstall, SmtpAccount shop: %v (the CRDs must be kept)", err)
	}
}

// waitCRDsEstablished waits until the API server serves the three kinds.
func waitCRDsEstablished(t *testing.T) {
	t.Helper()
	out, err := kubectl(nil, "wait", "--for=condition=Established", fmt.Sprintf("--timeout=%ds", int(installWait.Seconds())),
		"crd/smtprelays.mailfleet.io", "crd/smtpaccounts.mailfleet.io", "crd/smtplabels.mailfleet.io")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// operatorProcess is `mailfleet operator` started from a Deployment.
type operatorProcess struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *syncbuffer.Buffer
	once   sync.Once
	// metrics is the loopback address its metrics endpoint listens on.
	metrics string
}

// startOperator runs the image's binary with the Deployment's args and env,
// as the Deployment's ServiceAccount, and waits until it is ready.
func startOperator(t *testing.T, dep *appsv1.Deployment) *operatorProcess {
	t.Helper()
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("the operator Deployment has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Command) > 0 {
		t.Fatalf("command %v: the image's entrypoint is the mailfleet binary, the Deployment should give args only", c.Command)
	}
	probes, metrics := loopback.FreeAddr(t), loopback.FreeAddr(t)
	remap := map[string]string{
		"--metrics-bind-address=":      metrics,
		"--health-probe-bind-address=": probes,
	}
	args := append([]string(nil), c.Args...)
	for prefix, addr := range remap {
		found := false
		for i, a := range args {
			if strings.HasPrefix(a, prefix) {
				args[i], found = prefix+addr, true
			}
		}
		if !found {
			t.Fatalf("args %v lack %s...; the test moves it to a loopback port", c.Args, prefix)
		}
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := envtestkit.WriteKubeconfig(env.Config, envtestkit.ServiceAccount(dep.Namespace, pod.ServiceAccountName), kubeconfig); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(imageBinary(t), args...)
	cmd.Env = []string{"KUBECONFIG=" + kubeconfig, "HOME=" + t.TempDir()}
	for _, e := range c.Env {
		value := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			// The downward API, as the kubelet resolves it.
			value = dep.Namespace
		case e.ValueFrom != nil:
			t.Fatalf("env %s comes from %v; the test passes literal values and the pod's namespace only", e.Name, e.ValueFrom)
		}
		cmd.Env = append(cmd.Env, e.Name+"="+value)
	}
	p := &operatorProcess{cmd: cmd, exited: make(chan error, 1), logs: &syncbuffer.Buffer{}, metrics: metrics}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		p.once.Do(func() {
			cmd.Process.Kill()
			<-p.exited
		})
		if t.Failed() {
			t.Logf("operator logs:\n%s", p.logs)
		}
	})
	envtestkit.Eventually(t, installWait, func() error {
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("the operator exited: %v\n%s", err, p.logs)
		default:
		}
		resp, err := http.Get("http://" + probes + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	return p
}

// stop sends SIGTERM, as the kubelet does, and wants a clean exit within the
// Deployment's grace period.
func (p *operatorProcess) stop(t *testing.T) {
	t.Helper()
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil {
				t.Errorf("the operator exited with %v after SIGTERM", err)
			}
		case <-time.After(40 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
			t.Error("the operator did not exit within 40 s of SIGTERM")
		}
	})
}

// applySamplesReady applies config/samples with kubectl, as its
// kustomization says users do, plays cert-manager and the Deployment
// controller, and waits with `kubectl wait` for every sample to be Ready.
func applySamplesReady(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	built, err := kubectl(nil, "kustomize", "config/samples")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(built, "apply", "--server-side", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs := splitYAML(t, built)
	var certNames []string
	for _, c := range find(t, objs, "Certificate", -1) {
		certNames = append(certNames, c.GetName())
	}
	relays := find(t, objs, "SmtpRelay", -1)
	for _, r := range relays {
		if _, found, _ := unstructured.NestedMap(r.Object, "spec", "tls", "issuerRef"); found {
			certNames = append(certNames, r.GetName()) // the operator names the relay's Certificate after it
		}
	}
	cm := &envtestkit.CertManager{Client: env.Client, Namespace: ns, Wait: installWait}
	if err := cm.IssueAll(ctx, certNames...); err != nil {
		t.Fatal(err)
	}
	for _, r := range relays {
		envtestkit.Eventually(t, installWait, func() error {
			return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: r.GetName()}, &appsv1.Deployment{})
		})
		if err := envtestkit.MarkDeploymentReady(ctx, env.Client, ns, r.GetName()); err != nil {
			t.Fatal(err)
		}
	}
	out, err := kubectl(nil, "wait", "--for=condition=Ready", "smtprelays,smtpaccounts,smtplabels", "--all",
		"-n", ns, fmt.Sprintf("--timeout=%ds", int(installWait.Seconds())))
	if err != nil {
		for _, kind := range []string{"smtprelays", "smtpaccounts", "smtplabels"} {
			status, _ := kubectl(nil, "get", kind, "-n", ns, "-o", "custom-columns=NAME:.metadata.name,REASON:.status.conditions[0].reason,MESSAGE:.status.conditions[0].message")
			t.Logf("%s:\n%s", kind, status)
		}
		t.Fatalf("%v\n%s", err, out)
	}
	for _, kind := range []string{"SmtpRelay", "SmtpAccount", "SmtpLabel"} {
		for _, o := range find(t, objs, kind, -1) {
			line := fmt.Sprintf("%s.mailfleet.io/%s condition met", strings.ToLower(kind), o.GetName())
			if !strings.Contains(string(out), line) {
				t.Errorf("kubectl wait did not report %q:\n%s", line, out)
			}
		}
	}
	if len(relays) == 0 || len(find(t, objs, "SmtpAccount", -1)) == 0 || len(find(t, objs, "SmtpLabel", -1)) == 0 {
		t.Error("config/samples should show every kind")
	}
}

// checkNotes has the API server judge the resources NOTES.txt tells the
// user to apply (a server-side dry run), so the first steps it prints work.
func checkNotes(t *testing.T, notes []byte) {
	t.Helper()
	blocks := regexp.MustCompile(`(?s)<<'YAML'\n(.*?)\n\s*YAML\n`).FindAllSubmatch(notes, -1)
	if len(blocks) < 2 {
		t.Fatalf("NOTES.txt shows %d YAML blocks, want an SmtpRelay and an SmtpAccount:\n%s", len(blocks), notes)
	}
	for _, want := range []string{"spec.rateLimit.redis.address", "spec.queue.nats.url", "BASIC"} {
		if !strings.Contains(string(notes), want) {
			t.Errorf("NOTES.txt does not mention %s:\n%s", want, notes)
		}
	}
	ns := env.CreateNamespace(t, "notes", nil)
	for _, b := range blocks {
		if out, err := kubectl(b[1], "apply", "--server-side", "--dry-run=server", "-n", ns, "-f", "-"); err != nil {
			t.Errorf("NOTES.txt YAML refused: %v\n%s\n%s", err, out, b[1])
		}
	}
}
